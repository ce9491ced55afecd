"""Real media files for tests: clips made from the bundled public-domain photographs, and broken files of every kind."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from storage.video import ffmpeg_exe, write_quiet_audio, write_video

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "data" / "demo" / "photos"
DEMO_VIDEOS = ROOT / "data" / "demo" / "voxceleb"


def photo(name: str = "astronaut.jpg") -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(PHOTOS / name))[:, :, ::-1])


def face_frames(count: int, size: int = 256, name: str = "astronaut.jpg", drift: float = 2.0) -> np.ndarray:
    """`count` frames of a face photo, resized so its longest side is `size`, panning slowly."""
    image = photo(name)
    scale = size / max(image.shape[:2])
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    frames = [np.roll(canvas, int(round(i * drift / max(count, 1))), axis=1) for i in range(count)]
    return np.stack(frames)


def write_clip(path: Path, frames: np.ndarray, fps: float = 25, audio: bool = False, **options) -> Path:
    audio_file = write_quiet_audio(path.with_suffix(".wav"), len(frames) / fps) if audio else None
    write_video(path, frames, fps, audio_from=audio_file, **options)
    if audio_file:
        audio_file.unlink()
    return path


def audio_only(path: Path, seconds: float = 1.0) -> Path:
    wav = write_quiet_audio(path.with_suffix(".wav"), seconds)
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
    wav.unlink()
    return path


def zero_frames(path: Path) -> Path:
    """An mp4 with a video stream that holds no frame."""
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=size=64x64:rate=25",
                    "-frames:v", "0", "-c:v", "libx264", str(path)], check=True)
    return path


def variable_frame_rate(path: Path, frames: np.ndarray, intervals_ms: list[int]) -> Path:
    """An mp4 whose frames are shown for the given durations (cycled), i.e. a truly variable frame rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += intervals_ms[i % len(intervals_ms)]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _video_media_header(data: bytes) -> int:
    """Offset of the video track's `mdhd` box type in an mp4 (the track whose handler is 'vide')."""
    start = 0
    while (trak := data.find(b"trak", start)) >= 0:
        size = int.from_bytes(data[trak - 4 : trak], "big")
        box = data[trak - 4 : trak - 4 + size]
        handler = box.find(b"hdlr")
        if handler >= 0 and box[handler + 12 : handler + 16] == b"vide":
            return trak - 4 + box.find(b"mdhd")
        start = trak + 4
    raise ValueError("no video track")


def absurd_time_base(path: Path, source: Path, timescale: int = 1) -> Path:
    """A copy of an mp4 whose video track's time scale says `timescale` ticks a second (one, by default): its frame
    times stay in the original ticks, so a 25 fps clip reads as ~0.002 fps and 2 s span hours."""
    data = bytearray(source.read_bytes())
    header = _video_media_header(bytes(data))
    version = data[header + 4]
    offset = header + 8 + (16 if version == 1 else 8)  # after the type, version/flags and creation/modification times
    data[offset : offset + 4] = timescale.to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def damaged_middle(path: Path, source: Path, at: float = 0.6, length: int = 200, seed: int = 0) -> Path:
    """A copy of a file with `length` random bytes written over it at fraction `at` of its size: a container that
    is whole, with a damaged frame inside."""
    data = bytearray(source.read_bytes())
    start = int(len(data) * at)
    data[start : start + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path
