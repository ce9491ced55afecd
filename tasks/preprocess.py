"""Preprocessing of one clip: probe, decode, detect and align, crop, write to the store.

The work runs in two passes over the decoded frames so memory stays bounded for any clip length: pass one keeps only
landmarks (68 points a frame) to smooth the crop boxes over the whole clip; pass two decodes again and crops.
Decoding is the cheap part (thousands of frames/s), detection the dear one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from models.detect import align, build_detector
from models.detect.base import MissingWeightsError, detection_scales, working_scale
from models.temporal import nearest_true
from storage.inputs import ClipSource
from storage.manifest import finish_row
from storage.settings import default_weights_dir
from storage.store import ClipStore
from storage.video import VideoError, VideoInfo, VideoReader, probe, sha256_file

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 2  # bump when the crops this code writes change for the same config
BATCH_BYTES = 256 << 20  # decoded frames held at once; 4K frames get smaller batches


class PreprocessConfig(BaseModel):
    """Everything that decides the crops. Its hash (all fields but the batch size) marks a clip as done."""

    fps: float | None = Field(None, gt=0, description="Resample to this frame rate (VoxCeleb work uses 25); None keeps the native rate.")
    detector: str = Field("dlib", description="Face detector backend: 'dlib' (offline default) or 'retinaface' (user-supplied weights).")
    weights_dir: str | None = Field(None, description="Weights directory for detectors that need one.")
    crop_size: int = Field(256, ge=32, le=2048, description="Side of the square crop in pixels.")
    box_smoothing: float = Field(2.0, ge=0, description="Temporal smoothing of the crop box (Gaussian sigma in frames; 0 = off).")
    detect_max_side: int = Field(640, ge=64, description="Frames are downscaled to this longest side for detection.")
    batch_size: int = Field(32, ge=1, description="Frames decoded and analysed at once (fewer for very large frames).")

    def config_hash(self) -> str:
        fields = self.model_dump(exclude={"batch_size", "weights_dir"})
        fields["version"] = PREPROCESS_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


class NoFaceError(RuntimeError):
    pass


def code_version() -> str:
    try:
        return metadata.version("face-reenact")
    except metadata.PackageNotFoundError:
        return "unknown"


_detectors: dict[tuple, object] = {}
_detectors_lock = threading.Lock()


def detector_for(config: PreprocessConfig):
    """One detector per process and config, loaded once (~1 s): backends are read-only at inference (dlib keeps a
    HOG scanner per thread), so the threads of a run, and runs after it, share it."""
    key = (config.detector, config.weights_dir, config.detect_max_side)
    with _detectors_lock:
        if key not in _detectors:
            weights_dir = Path(config.weights_dir) if config.weights_dir else default_weights_dir()
            _detectors[key] = build_detector(config.detector, weights_dir, max_side=config.detect_max_side)
        return _detectors[key]


def preprocess_clip(source: ClipSource, store: ClipStore, config: PreprocessConfig) -> dict:
    """Process one clip and return its manifest row. Input problems become a `failed` row, never an exception."""
    started = time.perf_counter()
    row = {"identity": source.key.identity, "video": source.key.video, "clip": source.key.clip,
           "source_path": str(source.path), "config_hash": config.config_hash(), "error": None}
    try:
        if source.error:
            raise VideoError(source.error)
        info = probe(source.path)
        row.update(source_frames=info.frames, source_fps=info.fps, width=info.width, height=info.height,
                   has_audio=info.has_audio, source_sha256=sha256_file(source.path))
        row["seconds_probe"] = time.perf_counter() - started
        if _already_done(store, source, row):
            return finish_row(row, "skipped", started)
        reader = VideoReader(source.path, fps=config.fps)
        batch = decode_batch_size(info, config.batch_size)
        t_analyse = time.perf_counter()
        landmarks, boxes, has_face, faces, row["face_scale"] = analyse_faces(reader, batch, config)
        row["seconds_analyse"] = time.perf_counter() - t_analyse
        t_write = time.perf_counter()
        _write(store, source, reader, batch, config, landmarks, boxes, has_face, faces, info, row)
        row["seconds_write"] = time.perf_counter() - t_write
        row.update(frames=len(reader), fps=reader.fps, faces_max=int(faces.max()),
                   frames_without_face=int((~has_face).sum()))
        return finish_row(row, "ok", started)
    except MissingWeightsError:
        raise  # a setup problem, not a property of this clip: stop the run
    except (VideoError, NoFaceError, OSError) as err:
        row["error"] = str(err)
    except Exception as err:  # a bug or an unforeseen input: record it and let the batch go on
        log.error("unexpected error on %s:\n%s", source.path, traceback.format_exc())
        row["error"] = f"internal error: {type(err).__name__}: {err}"
    return finish_row(row, "failed", started)


def _already_done(store: ClipStore, source: ClipSource, row: dict) -> bool:
    if not store.has(source.key):
        return False
    attrs = store.attrs(source.key)
    if attrs.get("source_sha256") != row["source_sha256"] or attrs.get("config_hash") != row["config_hash"]:
        return False
    row.update({k: attrs.get(k) for k in ("frames", "fps", "faces_max", "frames_without_face")})
    return True


def decode_batch_size(info: VideoInfo, wanted: int) -> int:
    """Frames decoded at once: `wanted`, fewer for very large frames (at most BATCH_BYTES of decoded frames)."""
    return max(1, min(wanted, BATCH_BYTES // (info.width * info.height * 3)))


def analyse_faces(reader: VideoReader, batch: int, config: PreprocessConfig):
    """Pass one: landmarks of the chosen face per frame, smoothed crop boxes, and the detection scale at which the
    clip's face was found: the working scale (frames shrunk to `detect_max_side`), or, when that finds no face in
    any frame, the first finer level (`models.detect.base.detection_scales`) that finds one in a few probe frames;
    small faces (down to ~40 px) are found there."""
    detector = detector_for(config)
    detections, size = _detect_all(reader, batch, detector, None)
    scale = working_scale(*size, detector.max_side)
    if not any(detections):
        searched = detection_scales(*size, detector.max_side)
        scale = _finer_scale(reader, batch, detector, searched[1:])
        if scale is None:
            levels = ", ".join(f"{level:.3g}" for level in searched)
            raise NoFaceError(f"no face detected in any of {len(detections)} frames (searched at scales {levels} "
                              "of the frame)")
        detections, _ = _detect_all(reader, batch, detector, scale)
    chosen, faces = align.select_faces(detections)
    has_face = np.array([face is not None for face in chosen])
    if not has_face.any():
        raise NoFaceError(f"no face detected in any of {len(chosen)} frames")
    landmarks = _fill_gaps(np.stack([f.landmarks if f is not None else np.full((68, 2), np.nan) for f in chosen]), has_face)
    boxes = align.smooth_boxes(np.stack([align.crop_box(points) for points in landmarks]), config.box_smoothing)
    return landmarks.astype(np.float32), boxes.astype(np.float32), has_face, np.asarray(faces), scale


PROBE_FRAMES = 8  # frames, spread over the clip, on which finer detection scales are tried


def _detect_all(reader: VideoReader, batch: int, detector, scale: float | None) -> tuple[list, tuple[int, int]]:
    """Every frame's faces at `scale` (None: the working scale), and the frames' height and width."""
    detections, size = [], (0, 0)
    for frames in reader.batches(batch):
        detections.extend(detector.detect(frames, scale))
        size = frames.shape[1:3]
    return detections, size


def _finer_scale(reader: VideoReader, batch: int, detector, scales: list[float]) -> float | None:
    """The first of `scales` at which a face is found in one of a few frames spread over the clip."""
    wanted = set(np.linspace(0, len(reader) - 1, min(PROBE_FRAMES, len(reader))).round().astype(int).tolist())
    probes = [frame for start, frames in zip(range(0, len(reader), batch), reader.batches(batch))
              for index, frame in enumerate(frames, start) if index in wanted]
    for scale in scales:
        if any(detector.detect(frame[None], scale)[0] for frame in probes):
            return scale
    return None


def _fill_gaps(landmarks: np.ndarray, has_face: np.ndarray) -> np.ndarray:
    """Frames without a face take the landmarks of the nearest frame with one, so the crop holds still there."""
    return landmarks[nearest_true(has_face)]


def _write(store, source, reader, batch, config, landmarks, boxes, has_face, faces, info, row) -> None:
    """Pass two: decode again, crop, and publish the clip atomically."""
    size = config.crop_size
    with store.write_clip(source.key) as clip:
        crops = clip.create("crops", (len(reader), size, size, 3), "uint8")
        for start, frames in zip(range(0, len(reader), batch), reader.batches(batch)):
            crops[start : start + len(frames)] = align.crop_faces(frames, boxes[start : start + len(frames)], size)
        clip.put("landmarks", align.landmarks_to_crop(landmarks, boxes, size).astype(np.float32))
        clip.put("boxes", boxes)
        clip.put("has_face", has_face)
        clip.put("faces", faces.astype(np.uint8))
        clip.set_attrs(
            source_path=str(source.path), source_sha256=row["source_sha256"], config_hash=row["config_hash"],
            config=config.model_dump(exclude={"batch_size"}), code_version=code_version(),
            preprocess_version=PREPROCESS_VERSION, fps=reader.fps, frames=len(reader),
            source=info.as_dict(), faces_max=int(faces.max()), frames_without_face=int((~has_face).sum()),
            landmarks_space="crop pixels", boxes_space="source-frame pixels, square x0 y0 x1 y1",
        )


@task(name="preprocess-clip", cache_policy=NO_CACHE, task_run_name="preprocess {source.key}")
def preprocess_clip_task(source: ClipSource, store_path: str, config: PreprocessConfig) -> dict:
    """Prefect task around `preprocess_clip`; takes the store's path so it can run in another process (Dask)."""
    return preprocess_clip(source, ClipStore.open(store_path), config)
