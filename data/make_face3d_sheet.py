"""The landmark-fit backend at a glance: docs/images/face3d_contact_sheet.png.

    python data/make_face3d_sheet.py

Top row: the bundled photographs (data/demo/photos), cut to the paper's 256 crop around dlib's landmarks, as the
pipeline stores them. Bottom row: held-out renders of the synthetic world. On each: dlib's landmarks (red), the
fitted head's 68 landmarks projected (green), and the estimated yaw / pitch / roll (degrees) and jaw (radians);
renders also show the truth.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.detect import build_detector, crop_box, crop_faces  # noqa: E402
from models.face3d import build_face3d  # noqa: E402
from models.face3d.landmark_source import LandmarkSource  # noqa: E402
from training.face3d_regressor import heldout_renders  # noqa: E402

PHOTOS = ("obama", "obama2", "biden", "astronaut")
RENDERS = (0, 1, 2, 4)  # held-out renders with varied poses that dlib finds
OUT = ROOT / "docs" / "images" / "face3d_contact_sheet.png"


def photo_crops() -> np.ndarray:
    detector = build_detector("dlib")
    crops = []
    for name in PHOTOS:
        image = np.asarray(Image.open(ROOT / "data" / "demo" / "photos" / f"{name}.jpg").convert("RGB"))
        face = max(detector.detect(image[None])[0], key=lambda f: f.area)
        crops.append(crop_faces(image[None], crop_box(face.landmarks)[None])[0])
    return np.stack(crops)


def annotate(image: np.ndarray, detected: np.ndarray, estimate, index: int, truth: np.ndarray | None) -> np.ndarray:
    tile = image.copy()
    for x, y in detected:
        cv2.circle(tile, (int(round(x)), int(round(y))), 2, (230, 40, 40), -1, cv2.LINE_AA)
    for x, y in estimate.landmarks[index].numpy():
        cv2.circle(tile, (int(round(x)), int(round(y))), 2, (40, 230, 60), -1, cv2.LINE_AA)
    p = estimate.params
    lines = [f"fit  y{p.yaw[index]:6.1f} p{p.pitch[index]:6.1f} r{p.roll[index]:6.1f} j{p.jaw[index]:.2f}"]
    if truth is not None:
        lines.append(f"true y{truth[0]:6.1f} p{truth[1]:6.1f} r{truth[2]:6.1f} j{truth[3]:.2f}")
    if not bool(estimate.found[index]):
        lines.append("not found")
    cv2.rectangle(tile, (0, 0), (255, 14 * len(lines) + 4), (0, 0, 0), -1)
    for row, text in enumerate(lines):
        cv2.putText(tile, text, (4, 14 * row + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def main() -> None:
    source = LandmarkSource()
    fit = build_face3d("landmark-fit", landmarks=source)
    photos = photo_crops()
    images, _, targets = heldout_renders(max(RENDERS) + 1)
    renders, truths = images[list(RENDERS)], targets[list(RENDERS)]
    rows = []
    for batch, truth in ((photos, None), (renders, truths)):
        detected, _ = source.resolve(batch)
        estimate = fit.estimate(batch, detected)
        rows.append(np.concatenate([annotate(batch[i], detected[i], estimate, i, None if truth is None else truth[i])
                                    for i in range(len(batch))], axis=1))
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour palette keeps the sheet small enough for the repository
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
