"""The clip store's checks: what checking every chunk on read costs, and how long the cheap and full checks take.

    python benchmarks/store.py                  # a 256-frame clip of the demo's crops, read 5 times each way

Reads the same clip version through `ClipStore.clip` (each chunk's size and CRC-32 compared with those recorded at
publishing) and through plain Zarr (no check), in the same process, best of the repeats, and prints the ratio.
Then times `ClipStore.check` per clip: cheap (what preprocess-dataset runs before skipping a clip) and full
(store-verify).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zarr  # noqa: E402

from storage.store import ArraySpec, ClipKey, ClipStore  # noqa: E402
from storage.video import VideoReader  # noqa: E402

KEY = ClipKey("id0", "v0", "00001")


def demo_crops(frames: int) -> np.ndarray:
    """Real video frames (the first demo clip, forth and back), cut to 256x256."""
    video = np.concatenate(list(VideoReader(sorted((ROOT / "data/demo/voxceleb").glob("*/*/*.mp4"))[0]).batches(64)))
    cycle = np.concatenate([video, video[::-1]])[:, :256, :256]
    return np.resize(cycle, (frames, *cycle.shape[1:]))


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    crops = demo_crops(args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        store = ClipStore.open(Path(tmp) / "d.zarr")
        with store.write_clip(KEY, expect={"crops": ArraySpec("uint8", (None, *crops.shape[1:]))}) as clip:
            clip.put("crops", crops)
        chunk_bytes = sum(p.stat().st_size for p in (store.clip_dir(KEY) / "crops" / "c").rglob("*") if p.is_file())
        plain = zarr.open_group(str(store.clip(KEY).version), mode="r")["crops"]
        checked = store.clip(KEY).crops
        assert np.array_equal(plain[:], checked[:])
        seconds = {"plain zarr": best_of(args.repeats, lambda: plain[:]),
                   "checked (ClipStore.clip)": best_of(args.repeats, lambda: checked[:])}
        base = seconds["plain zarr"]
        print(f"{args.frames} frames 256x256, {chunk_bytes / 2**20:.1f} MiB in {len(list((store.clip_dir(KEY) / 'crops' / 'c').iterdir()))} chunks")
        print(f"{'read':<26} {'frames/s':>9} {'ratio':>7}")
        for name, value in seconds.items():
            print(f"{name:<26} {args.frames / value:9.0f} {value / base:6.2f}x time")
        for full in (False, True):
            value = best_of(args.repeats, lambda: store.check(KEY, full=full))
            print(f"check, {'full (store-verify)' if full else 'cheap (before a skip)':<22} {value * 1e3:8.1f} ms per clip")


if __name__ == "__main__":
    main()
