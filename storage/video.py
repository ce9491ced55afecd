"""Video files on disk: probe, decode in batches, write H.264 mp4.

Probing and decoding use PyAV (libav inside a wheel, so it needs no ffprobe binary); writing pipes raw frames into
an ffmpeg process through ffmpeg-python. The ffmpeg binary is the system one when present, else the one shipped
inside the `imageio-ffmpeg` wheel.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from collections.abc import Iterator, Sequence

import numpy as np

from storage.files import sha256_file  # noqa: F401  (re-exported: callers hash the videos they probe)


class VideoError(RuntimeError):
    """A file that cannot be used as a video; the message says why in words a user can act on."""


class TruncatedVideoError(VideoError):
    """A video with fewer readable frames than its container declares, or a decoder error mid-stream."""

    def __init__(self, message: str, readable: int, declared: int):
        super().__init__(message)
        self.readable = readable
        self.declared = declared


# A file may hold this many frames fewer than its container declares and still count as whole (encoders and muxers
# disagree by a frame or two at the ends); more missing is truncation.
TRUNCATION_TOLERANCE_FRAMES = 2
TRUNCATION_TOLERANCE_FRACTION = 0.01
# Resampling may repeat a source frame this many times on average (a 2.5 fps file at --fps 25); more means a
# broken time base (e.g. seconds written as ticks), and planning it would multiply the work without bound.
MAX_REPEAT = 10


def truncation_tolerance(declared: int) -> int:
    return max(TRUNCATION_TOLERANCE_FRAMES, int(declared * TRUNCATION_TOLERANCE_FRACTION))


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a file before any frame is decoded."""

    path: str
    frames: int  # counted video packets (container metadata is often missing or wrong)
    declared_frames: int  # what the container says (its frame count, else duration x rate; 0 if it says nothing)
    fps: float  # average frame rate
    width: int
    height: int
    duration: float  # seconds
    codec: str
    pixel_format: str
    has_audio: bool
    variable_frame_rate: bool

    @property
    def grayscale(self) -> bool:
        return self.pixel_format.startswith("gray")

    @property
    def truncated(self) -> bool:
        """Fewer frames in the file than its container declares, beyond the tolerance."""
        return self.declared_frames - self.frames > truncation_tolerance(self.declared_frames)

    def as_dict(self) -> dict:
        return asdict(self)


def ffmpeg_exe() -> str:
    """Path of an ffmpeg binary: the system's, else the one bundled in imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read stream metadata and count video packets; raise VideoError for anything that is not a usable video."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"not a readable file: {path}")
    if not os.access(path, os.R_OK):
        raise VideoError(f"permission denied: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise VideoError(f"not a media file ({type(err).__name__}: {err})") from err
    with container:
        video = next((s for s in container.streams if s.type == "video"), None)
        has_audio = any(s.type == "audio" for s in container.streams)
        if video is None:
            kind = "audio-only file" if has_audio else "no video stream"
            raise VideoError(f"{kind}: nothing to decode")
        codec = video.codec_context
        average = video.average_rate or video.guessed_rate
        base = video.base_rate or video.guessed_rate
        frames = _count_packets(container, video)
        if video.duration is not None:
            duration = float(video.duration * video.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        if average is None and duration > 0:
            average = Fraction(frames) / Fraction(duration)
        declared = int(video.frames or 0) or (int(round(duration * float(average))) if average and duration > 0 else 0)
        info = VideoInfo(
            path=str(path),
            frames=frames,
            declared_frames=declared,
            fps=float(average or 0.0),
            width=int(codec.width or 0),
            height=int(codec.height or 0),
            duration=duration,
            codec=codec.name or "",
            pixel_format=codec.pix_fmt or "",
            has_audio=has_audio,
            variable_frame_rate=bool(average and base and abs(float(average) - float(base)) > 0.01 * float(base)),
        )
    if info.frames == 0:
        raise VideoError("zero video frames")
    if info.width == 0 or info.height == 0 or info.fps <= 0:
        raise VideoError(f"unreadable video stream (size {info.width}x{info.height}, fps {info.fps:g})")
    return info


def _count_packets(container, stream) -> int:
    try:
        return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except Exception as err:  # a truncated file can fail mid-demux; what was read is the count
        raise VideoError(f"corrupt or truncated file ({type(err).__name__}: {err})") from err


def sample_indices(timestamps: np.ndarray, fps: float | None) -> np.ndarray:
    """Indices of decoded frames to keep: all of them (fps None), or the frame nearest each tick of a `fps` clock.

    `timestamps` are the presentation times of the decoded frames in seconds, so variable-frame-rate files resample
    correctly: each output tick takes the latest frame shown at that time.
    """
    if fps is None or len(timestamps) == 0:
        return np.arange(len(timestamps))
    start, end = float(timestamps[0]), float(timestamps[-1])
    # Tolerances of a thousandth of a frame absorb the rounding of container timestamps.
    ticks = start + np.arange(int(np.floor((end - start) * fps + 1e-3)) + 1) / fps
    return np.clip(np.searchsorted(timestamps, ticks + 1e-3 / fps, side="right") - 1, 0, len(timestamps) - 1)


class VideoReader:
    """Batched RGB decoding of one file (PyAV), optionally resampled to a fixed frame rate.

    Frames come out as uint8 [B, H, W, 3] RGB, turned upright where the file says it is rotated; grayscale sources
    are expanded to three channels.

    Decoding runs in the caller's thread, one frame at a time, so memory holds one batch whatever the clip's length.
    decord (used before) cannot promise that: its first read queues every remaining packet of the file for its
    decoder thread, which then converts them all to RGB frames while the caller is busy with a batch (measured: a
    3000-frame 320x320 clip held 2960 frames, 870 MiB, two seconds after reading its first batch). Its RGB frames
    are the same bytes as these (both convert with libswscale's unscaled path).
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = None, accept_truncated: bool = False):
        import av

        self.path = str(path)
        self.accept_truncated = accept_truncated
        self.decode_error: str | None = None  # set when decoding stopped early (accept_truncated only)
        try:
            with av.open(self.path) as container:
                stream = _video_stream(container)
                base = stream.start_time or 0
                pts = sorted(p.pts if p.pts is not None else p.dts for p in container.demux(stream) if p.size > 0)
                time_base, average = stream.time_base, stream.average_rate or stream.guessed_rate
        except av.error.FFmpegError as err:
            raise VideoError(f"cannot decode ({_first_line(err)})") from err
        if not pts:
            raise VideoError("zero decodable frames")
        timestamps = (np.asarray(pts, np.float64) - base) * float(time_base)
        self.native_fps = float(average) if average else (len(pts) - 1) / max(timestamps[-1] - timestamps[0], 1e-9)
        self.fps = float(fps) if fps else self.native_fps
        if fps:
            _check_plan(timestamps, fps)
        self.indices = sample_indices(timestamps, fps)
        self.source_frames = len(pts)
        self.readable_frames = len(pts)  # fewer once decoding stopped early (accept_truncated)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield consecutive batches of frames in output order; memory holds one batch at a time.

        A decoder error, or a frame the decoder marks corrupt, raises TruncatedVideoError; with `accept_truncated`
        the output ends before that frame instead (`len(self)` shrinks to match, `decode_error` says why), so a
        second pass yields the same frames."""
        import av

        wanted = iter(self.indices.tolist())  # non-decreasing; a frame repeats where fps upsamples
        batch: list[np.ndarray] = []
        position, target = -1, next(wanted, None)
        error = None
        try:
            with av.open(self.path) as container:
                for position, frame in enumerate(container.decode(_video_stream(container))):
                    if target is None:
                        break
                    if frame.is_corrupt:
                        error = "the decoder reports a damaged frame"
                        break
                    if position < target:
                        continue  # dropped by resampling: not converted
                    image = _upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                    while target == position:
                        batch.append(image)
                        if len(batch) == batch_size:
                            yield np.stack(batch)
                            batch = []
                        target = next(wanted, None)
                else:
                    position += 1
                    if target is not None:
                        error = "the file ends early"
        except av.error.FFmpegError as err:
            position += 1
            error = _first_line(err)
        if error is not None and target is not None:
            readable = position  # frames decoded cleanly before the problem
            if not self.accept_truncated:
                raise TruncatedVideoError(
                    f"truncated or damaged: cannot decode frame {readable + 1} of {self.source_frames} ({error}); "
                    f"{readable} frames readable (--accept-truncated keeps them)", readable, self.source_frames)
            self.decode_error = f"frame {readable + 1}: {error}"
            self.readable_frames = readable
            self.indices = self.indices[self.indices < readable]
            if not len(self.indices):
                raise TruncatedVideoError(f"no readable frame ({error})", 0, self.source_frames)
        if batch:
            yield np.stack(batch)


def _check_plan(timestamps: np.ndarray, fps: float) -> None:
    """Refuse a resampling plan that repeats source frames more than MAX_REPEAT times on average, before any array of
    that size exists (a broken time base can make a 2-second file span hours)."""
    span = float(timestamps[-1] - timestamps[0])
    planned = math.floor(span * fps + 1e-3) + 1
    if planned > MAX_REPEAT * len(timestamps):
        native = (len(timestamps) - 1) / span if span > 0 else float("inf")
        raise VideoError(
            f"implausible time stamps: {len(timestamps)} frames span {span:,.0f} s ({native:.3g} frames/s), so "
            f"resampling to {fps:g} fps would make {planned:,} frames, each source frame repeated "
            f"{planned / len(timestamps):,.0f} times (at most {MAX_REPEAT} allowed); the file's time base is likely "
            "wrong: re-mux it with its real frame rate, or leave out --fps to keep its frames as they are")


def count_readable(path: str | os.PathLike) -> tuple[int, str | None]:
    """Frames that decode cleanly from the start, and why decoding stopped early (None when it did not). Cheap: no
    colour conversion."""
    import av

    count, error = 0, None
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(_video_stream(container)):
                if frame.is_corrupt:
                    error = "the decoder reports a damaged frame"
                    break
                count += 1
    except av.error.FFmpegError as err:
        error = _first_line(err)
    return count, error


def read_frame(path: str | os.PathLike, index: int, fps: float | None = None) -> np.ndarray:
    """Frame `index` (0-based, after resampling to `fps`) of a video as uint8 [H, W, 3]; VideoError when the video
    has no such frame. Decodes from the start: meant for one frame, not for seeking through a video."""
    reader = VideoReader(path, fps=fps)
    if not 0 <= index < len(reader):
        raise VideoError(f"has {len(reader)} frames (0 to {len(reader) - 1}); there is no frame {index}")
    for start, frames in zip(range(0, len(reader), 64), reader.batches(64)):
        if index < start + len(frames):
            return frames[index - start]
    raise VideoError(f"cannot decode frame {index}")  # unreachable: batches() raises when the file ends early


def _video_stream(container):
    stream = next((s for s in container.streams if s.type == "video"), None)
    if stream is None:
        raise VideoError("no video stream: nothing to decode")
    return stream


def _upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """A frame turned as its display matrix says (counter-clockwise degrees), as players show it."""
    turns = int(round(rotation / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


class VideoWriter:
    """Stream RGB frames into an H.264 mp4 through an ffmpeg process, optionally muxing audio from another file.

    Use as a context manager. The file appears under its final name only after ffmpeg finished successfully, so an
    interrupted or failed write leaves nothing behind. Every frame written is kept: the audio is cut to
    `audio_seconds` when given, else the output ends with the shorter stream (ffmpeg's -shortest), which can drop
    frames when the audio is the shorter one.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        size: tuple[int, int],
        audio_from: str | os.PathLike | None = None,
        crf: int = 18,
        pixel_format: str = "yuv420p",
        audio_seconds: float | None = None,
    ):
        self.path = Path(path)
        self.fps = fps
        self.width, self.height = size
        self.audio_from = audio_from
        self.audio_seconds = audio_seconds
        self.crf = crf
        self.pixel_format = pixel_format
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._process = None

    def __enter__(self) -> VideoWriter:
        import ffmpeg

        self.path.parent.mkdir(parents=True, exist_ok=True)
        video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{self.width}x{self.height}", r=self.fps)
        streams = [video]
        if self.audio_from is not None:
            cut = {"t": f"{self.audio_seconds:.6f}"} if self.audio_seconds is not None else {}
            streams.append(ffmpeg.input(str(self.audio_from), **cut).audio)
        output = ffmpeg.output(
            *streams,
            str(self._partial),
            vcodec="libx264",
            pix_fmt=self.pixel_format,
            crf=self.crf,
            r=self.fps,
            movflags="+faststart",
            **({"acodec": "aac"} if self.audio_from is not None else {}),
            **({"shortest": None} if self.audio_from is not None and self.audio_seconds is None else {}),
        )
        self._process = output.overwrite_output().global_args("-loglevel", "error").run_async(
            cmd=ffmpeg_exe(), pipe_stdin=True, pipe_stderr=True
        )
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames [B, H, W, 3] (or one frame [H, W, 3])."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frame shape {frames.shape[1:]} != {(self.height, self.width, 3)}")
        self._process.stdin.write(frames.tobytes())

    def __exit__(self, exc_type, exc, tb) -> None:
        self._process.stdin.close()
        stderr = self._process.stderr.read().decode(errors="replace")
        code = self._process.wait()
        if exc_type is None and code == 0:
            os.replace(self._partial, self.path)
            return
        self._partial.unlink(missing_ok=True)
        if exc_type is None:
            raise VideoError(f"ffmpeg failed writing {self.path} (exit {code}): {stderr.strip()[-2000:]}")


def write_quiet_audio(path: str | os.PathLike, seconds: float, rate: int = 16000) -> Path:
    """A soft two-tone hum as 16-bit mono WAV: a real audio stream for clips whose muxing must keep one."""
    import wave

    t = np.arange(int(rate * seconds)) / rate
    signal = 0.02 * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 330 * t))
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((signal * 32767).astype(np.int16).tobytes())
    return Path(path)


def write_video(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray] | np.ndarray,
    fps: float,
    audio_from: str | os.PathLike | None = None,
    **options,
) -> Path:
    """Write a whole clip at once (small clips and tests); long videos should stream through VideoWriter."""
    frames = np.asarray(frames)
    with VideoWriter(path, fps, (frames.shape[2], frames.shape[1]), audio_from=audio_from, **options) as writer:
        writer.write(frames)
    return Path(path)
