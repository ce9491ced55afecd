"""Speed and memory of preprocessing: the flow's per-clip path against a naive per-frame loop, on the same clips.

    python benchmarks/preprocess.py                 # demo clips, plus long synthetic clips for the memory check
    python benchmarks/preprocess.py --help

Speed: frames/s of `tasks.preprocess.preprocess_clip` (batched decode, threaded detection, two passes, chunked
writes) and of a naive loop (decode -> detect -> crop -> write, one frame at a time, appending to a Zarr array),
in the same process, with the ratio. Memory: peak RSS of the per-clip path on clips of growing length, each in a
fresh subprocess; it must stay flat.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.detect import align  # noqa: E402
from models.detect.dlib_backend import DlibDetector  # noqa: E402
from storage.inputs import discover  # noqa: E402
from storage.store import ClipStore  # noqa: E402
from tasks.preprocess import PreprocessConfig, preprocess_clip  # noqa: E402


def naive(sources, store_root: Path, detector) -> int:
    """Decode, detect, crop and write one frame at a time: what a first script would do."""
    import decord
    import zarr

    frames_done = 0
    group = zarr.open_group(str(store_root), mode="w")
    for n, source in enumerate(sources):
        reader = decord.VideoReader(str(source.path), ctx=decord.cpu(0))
        crops = group.create_array(f"clip{n}", shape=(0, 256, 256, 3), chunks=(16, 256, 256, 3), dtype="uint8")
        for i in range(len(reader)):
            frame = reader[i].asnumpy()
            faces = detector.detect(frame[None])[0]
            if not faces:
                continue
            face = max(faces, key=lambda f: f.area)
            crop = align.crop_faces(frame[None], align.crop_box(face.landmarks)[None], 256)
            crops.append(crop)
            frames_done += 1
    return frames_done


def per_clip(sources, store_root: Path, config: PreprocessConfig) -> int:
    store = ClipStore.open(store_root)
    rows = [preprocess_clip(source, store, config) for source in sources]
    bad = [row["error"] for row in rows if row["status"] != "ok"]
    if bad:
        raise RuntimeError(f"benchmark clips failed: {bad}")
    return sum(row["frames"] for row in rows)


def speed(input_dir: Path, repeats: int) -> dict:
    sources = discover(input_dir)
    config = PreprocessConfig()
    detector = DlibDetector(threads=1)  # the naive loop: one frame, one thread
    per_clip(sources[:1], Path(tempfile.mkdtemp()) / "warm.zarr", config)  # load models, warm caches
    results = {}
    for name, run in (("naive per-frame loop", lambda root: naive(sources, root, detector)),
                      ("flow per-clip path", lambda root: per_clip(sources, root, config))):
        best = 0.0
        for _ in range(repeats):
            root = Path(tempfile.mkdtemp()) / "bench.zarr"
            start = time.perf_counter()
            frames = run(root)
            best = max(best, frames / (time.perf_counter() - start))
            shutil.rmtree(root.parent)
        results[name] = best
    return results


def peak_memory_child(clip: str) -> None:
    """Run in a subprocess: preprocess one clip, print peak RSS in MiB."""
    (source,) = discover(Path(clip).parents[2])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_clip([source], Path(tempfile.mkdtemp()) / "mem.zarr", PreprocessConfig())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "before_mib": before / 1024}))


def long_clip(seconds: float, workdir: Path) -> Path:
    """A clip of the given length: a demo clip's frames looped, 320x320 at 25 fps."""
    from storage.video import VideoReader, VideoWriter

    frames = np.concatenate(list(VideoReader(next((ROOT / "data/demo/voxceleb").glob("*/*/*.mp4"))).batches(64)))
    path = workdir / f"len{int(seconds)}" / "id0" / "v0" / "00001.mp4"
    cycle = np.concatenate([frames, frames[::-1]])  # forth and back, so motion stays smooth
    total = int(seconds * 25)
    with VideoWriter(path, 25, (frames.shape[2], frames.shape[1]), crf=28) as writer:
        for start in range(0, total, len(cycle)):
            writer.write(cycle[: total - start])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=ROOT / "data" / "demo" / "voxceleb", help="VoxCeleb-layout clips")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method; the best is kept")
    parser.add_argument("--lengths", default="10,40", help="clip lengths in seconds for the memory check")
    parser.add_argument("--peak-memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_child:
        return peak_memory_child(args.peak_memory_child)

    results = speed(args.input, args.repeats)
    base = results["naive per-frame loop"]
    print(f"{'method':<24} {'frames/s':>9} {'ratio':>7}")
    for name, fps in results.items():
        print(f"{name:<24} {fps:9.1f} {fps / base:6.2f}x")

    print(f"\n{'clip length':<12} {'frames':>7} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (float(s) for s in args.lengths.split(",")):
            clip = long_clip(seconds, Path(tmp))
            out = subprocess.run([sys.executable, __file__, "--peak-memory-child", str(clip)],
                                 capture_output=True, text=True, check=True).stdout
            peak = json.loads(out.strip().splitlines()[-1])["peak_mib"]
            print(f"{seconds:>9.0f} s  {int(seconds * 25):7d} {peak:13.0f}")


if __name__ == "__main__":
    main()
