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


def best_of(repeats: int, **works) -> dict[str, float]:
    """The best time of each piece of work, run in turns so that a busy machine slows them alike."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            started = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


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
        seconds = best_of(args.repeats, plain=lambda: plain[:], checked=lambda: checked[:])
        base = seconds["plain"]
        print(f"{args.frames} frames 256x256, {chunk_bytes / 2**20:.1f} MiB in {len(list((store.clip_dir(KEY) / 'crops' / 'c').iterdir()))} chunks")
        print(f"{'read':<26} {'frames/s':>9} {'ratio':>7}")
        for name, label in (("plain", "plain zarr"), ("checked", "checked (ClipStore.clip)")):
            print(f"{label:<26} {args.frames / seconds[name]:9.0f} {seconds[name] / base:6.2f}x time")
        checks = best_of(args.repeats, cheap=lambda: store.check(KEY), full=lambda: store.check(KEY, full=True))
        print(f"check, cheap (before a skip) {checks['cheap'] * 1e3:8.1f} ms per clip")
        print(f"check, full (store-verify)   {checks['full'] * 1e3:8.1f} ms per clip")


if __name__ == "__main__":
    main()
