"""Draw docs/images/synthetic_contact_sheet.png: synthetic identities (rows) under poses and expressions (columns).

    python data/make_contact_sheet.py [--out PATH] [--tile 112]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.directions import NUM_PARAMS  # noqa: E402
from models.synth.head import EXPRESSION_NAMES, mean_identity, sample_identity  # noqa: E402
from models.synth.render import render  # noqa: E402

# column title, then (yaw, pitch, roll, jaw) and expressions by name
COLUMNS = [
    ("neutral", (0, 0, 0, 0), {}),
    ("yaw +30", (30, 0, 0, 0), {}),
    ("yaw -30", (-30, 0, 0, 0), {}),
    ("pitch +15", (0, 15, 0, 0), {}),
    ("roll +10", (0, -5, 10, 0), {}),
    ("jaw 0.3", (10, 0, 0, 0.3), {"upper_lip_raise": 0.5}),
    ("smile", (-10, 0, 0, 0.05), {"smile": 1.0, "cheek_puff": 0.3}),
    ("pucker", (0, 5, 0, 0.02), {"lip_pucker": 1.0, "brow_frown": 0.8}),
    ("wink, brows", (15, -5, 0, 0), {"eye_close_left": 1.0, "brow_raise": 1.0}),
]


def contact_sheet(seeds: list[int], tile: int = 96) -> np.ndarray:
    params = np.zeros((len(COLUMNS), NUM_PARAMS), np.float32)
    for row, (_, pose, expressions) in zip(params, COLUMNS):
        row[:4] = pose
        for name, value in expressions.items():
            row[4 + EXPRESSION_NAMES.index(name)] = value
    header = np.full((18, tile * len(COLUMNS), 3), 255, np.uint8)
    for i, (title, _, _) in enumerate(COLUMNS):
        cv2.putText(header, title, (i * tile + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.34, (40, 40, 40), 1, cv2.LINE_AA)
    rows = [header]
    for seed in seeds:
        identity = mean_identity() if seed == 0 else sample_identity(seed)
        frames = render(identity, params)
        rows.append(np.concatenate([cv2.resize(f, (tile, tile), interpolation=cv2.INTER_AREA) for f in frames], 1))
    return np.concatenate(rows, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "synthetic_contact_sheet.png")
    parser.add_argument("--tile", type=int, default=96)
    args = parser.parse_args()
    sheet = contact_sheet([0, 1, 6, 7, 3, 9], args.tile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour palette keeps the file small (the repository carries it) and is invisible at this size
    Image.fromarray(sheet).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        args.out, optimize=True)
    print(f"{args.out}: {sheet.shape[1]}x{sheet.shape[0]}, {args.out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
