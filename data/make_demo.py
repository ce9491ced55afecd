"""Build the bundled demo clips (data/demo/voxceleb/) from public-domain face photographs.

The photographs come from registry packages: NASA's astronaut portrait in scikit-image (`skimage.data.astronaut`)
and the official White House portraits in the `face_recognition` 1.3.0 source distribution (tests/test_images).
Downscaled copies live in data/demo/photos/ so this script is reproducible offline; `--fetch` re-extracts them.

Each clip animates one photograph with smooth, seeded head-like motion (small rotation, zoom and translation) at a
given frame rate, with a quiet audio track, in VoxCeleb layout: <identity>/<video>/<clip>.mp4.

    python data/make_demo.py            # rebuild the clips from data/demo/photos
    python data/make_demo.py --fetch    # also re-extract the photos from the registry packages
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from storage.video import write_quiet_audio, write_video  # noqa: E402

PHOTOS = HERE / "demo" / "photos"
CLIPS = HERE / "demo" / "voxceleb"
FRAME = 320  # square frames; the face fills about a third of them

# (identity, video, clip, photo, seed, fps, seconds)
PLAN = [
    ("id00001", "astronaut01", "00001", "astronaut.jpg", 1, 25, 2.0),
    ("id00001", "astronaut01", "00002", "astronaut.jpg", 2, 25, 2.0),
    ("id00002", "obama000001", "00001", "obama.jpg", 3, 25, 2.0),
    ("id00002", "obama000002", "00001", "obama2.jpg", 4, 30, 2.0),
    ("id00003", "biden000001", "00001", "biden.jpg", 5, 25, 2.0),
]


def fetch_photos() -> None:
    """Extract the photographs from the registry packages into data/demo/photos (longest side 640)."""
    from skimage import data as skdata

    PHOTOS.mkdir(parents=True, exist_ok=True)
    _save(PHOTOS / "astronaut.jpg", skdata.astronaut())
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "face_recognition==1.3.0", "-d", tmp], check=True)
        with tarfile.open(next(Path(tmp).glob("face_recognition-*.tar.gz"))) as archive:
            for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
                member = archive.extractfile(f"face_recognition-1.3.0/tests/test_images/{name}")
                image = cv2.imdecode(np.frombuffer(member.read(), np.uint8), cv2.IMREAD_COLOR)
                _save(PHOTOS / name, image[:, :, ::-1])


def _save(path: Path, rgb: np.ndarray) -> None:
    scale = 640 / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])


def face_square(rgb: np.ndarray) -> tuple[float, float, float]:
    """Centre and side of a square around the largest face, with room for the crop's margin."""
    from models.detect import build_detector

    faces = build_detector("dlib").detect(rgb[None])[0]
    if not faces:
        raise RuntimeError("no face in a demo photograph")
    x0, y0, x1, y1 = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).box
    return (x0 + x1) / 2, (y0 + y1) / 2 - 0.1 * (y1 - y0), 3.0 * max(x1 - x0, y1 - y0)


def animate(photo: np.ndarray, seed: int, fps: float, seconds: float) -> np.ndarray:
    """Frames of the photo under smooth seeded motion: sums of slow sinusoids for angle, zoom and shift."""
    rng = np.random.default_rng(seed)
    cx, cy, side = face_square(photo)
    t = np.arange(int(round(fps * seconds))) / fps

    def wave_(amplitude: float) -> np.ndarray:
        freq, phase = rng.uniform(0.2, 0.9, 2), rng.uniform(0, 2 * np.pi, 2)
        return amplitude * 0.5 * (np.sin(2 * np.pi * freq[0] * t + phase[0]) + np.sin(2 * np.pi * freq[1] * t + phase[1]))

    angle, zoom, dx, dy = wave_(8.0), 1 + wave_(0.08), wave_(0.06 * side), wave_(0.04 * side)
    frames = []
    for a, z, sx, sy in zip(angle, zoom, dx, dy):
        scale = FRAME / side * z
        matrix = cv2.getRotationMatrix2D((cx + sx, cy + sy), a, scale)
        matrix[:, 2] += FRAME / 2 - np.array([cx + sx, cy + sy])
        frames.append(cv2.warpAffine(photo, matrix, (FRAME, FRAME), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", action="store_true", help="re-extract the photographs from the registry packages")
    args = parser.parse_args()
    if args.fetch or not PHOTOS.exists():
        fetch_photos()
    with tempfile.TemporaryDirectory() as tmp:
        for identity, video, clip, photo_name, seed, fps, seconds in PLAN:
            photo = cv2.imread(str(PHOTOS / photo_name))[:, :, ::-1]
            frames = animate(np.ascontiguousarray(photo), seed, fps, seconds)
            audio = write_quiet_audio(Path(tmp) / f"{seed}.wav", seconds)
            out = write_video(CLIPS / identity / video / f"{clip}.mp4", frames, fps, audio_from=audio, crf=26)
            print(f"{out.relative_to(HERE.parent)}: {len(frames)} frames at {fps} fps, {out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
