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

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from models.detect import align
from models.detect.base import MissingWeightsError, detection_scales, working_scale
from models.temporal import nearest_true
from storage.inputs import ClipSource
from storage.manifest import finish_row, record_row
from storage.networks import face_detector
from storage.settings import code_version
from storage.store import ArraySpec, ClipStore, StoreError
from storage.video import (TruncatedVideoError, VideoError, VideoInfo, VideoReader, count_readable, probe,
                           sha256_file)
from storage.weights import WeightsRegistry

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
    accept_truncated: bool = Field(False, description="Keep the readable part of a truncated or damaged video (noted in its manifest row and clip attrs) instead of failing it.")

    def config_hash(self) -> str:
        # accept_truncated changes no crop of a whole file; a truncated clip records it and is redone without it
        fields = self.model_dump(exclude={"batch_size", "weights_dir", "accept_truncated"})
        fields["version"] = PREPROCESS_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


class NoFaceError(RuntimeError):
    pass


_detectors: dict[tuple, object] = {}
_detectors_lock = threading.Lock()


def detector_for(config: PreprocessConfig):
    """One detector per process and config, loaded once (~1 s): backends are read-only at inference (dlib keeps a
    HOG scanner per thread), so the threads of a run, and runs after it, share it."""
    key = (config.detector, config.weights_dir, config.detect_max_side)
    with _detectors_lock:
        if key not in _detectors:
            _detectors[key] = face_detector(WeightsRegistry(config.weights_dir), config.detector,
                                            max_side=config.detect_max_side)
        return _detectors[key]


def clip_arrays(crop_size: int) -> dict[str, ArraySpec]:
    """The arrays of a preprocessed clip (None: its frame count); the store publishes a clip only with all of them."""
    return {"crops": ArraySpec("uint8", (None, crop_size, crop_size, 3)), "landmarks": ArraySpec("float32", (None, 68, 2)),
            "boxes": ArraySpec("float32", (None, 4)), "has_face": ArraySpec("bool", (None,)),
            "faces": ArraySpec("uint8", (None,))}


def preprocess_clip(source: ClipSource, store: ClipStore, config: PreprocessConfig, force: bool = False) -> dict:
    """Process one clip and return its manifest row. Input problems become a `failed` row, never an exception.

    A clip already in the store from the same bytes with the same config is skipped when it passes the store's
    cheap check (every array's chunks there at their published sizes); `force` computes it again regardless."""
    started = time.perf_counter()
    row = {"identity": source.key.identity, "video": source.key.video, "clip": source.key.clip, "name": source.name,
           "source_path": str(source.path), "config_hash": config.config_hash(),
           "config": config.model_dump_json(exclude={"batch_size"}), "error": None}
    try:
        if source.error:
            raise VideoError(source.error)
        info = probe(source.path)
        row.update(source_frames=info.frames, source_fps=info.fps, width=info.width, height=info.height,
                   declared_frames=info.declared_frames, has_audio=info.has_audio,
                   source_sha256=sha256_file(source.path))
        row["seconds_probe"] = time.perf_counter() - started
        if not force and _already_done(store, source, row, config):
            return finish_row(row, "skipped", started)
        if info.truncated and not config.accept_truncated:
            readable, error = count_readable(source.path)
            raise TruncatedVideoError(
                f"truncated: cannot decode past frame {readable} of the {info.declared_frames} its container declares "
                f"({error or 'the file ends early'}); {readable} frames readable (--accept-truncated keeps them)",
                readable, info.declared_frames)
        reader = VideoReader(source.path, fps=config.fps, accept_truncated=config.accept_truncated)
        batch = decode_batch_size(info, config.batch_size)
        t_analyse = time.perf_counter()
        landmarks, boxes, has_face, faces, row["face_scale"] = analyse_faces(reader, batch, config)
        row["seconds_analyse"] = time.perf_counter() - t_analyse
        if info.truncated or reader.decode_error:
            row.update(truncated=True, readable_frames=reader.readable_frames,
                       decode_error=reader.decode_error or "the file ends early")
        t_write = time.perf_counter()
        _write(store, source, reader, batch, config, landmarks, boxes, has_face, faces, info, row)
        row["seconds_write"] = time.perf_counter() - t_write
        row.update(frames=len(reader), fps=reader.fps, faces_max=int(faces.max()),
                   frames_without_face=int((~has_face).sum()))
        return finish_row(row, "ok", started)
    except MissingWeightsError:
        raise  # a setup problem, not a property of this clip: stop the run
    except TruncatedVideoError as err:
        row.update(error=str(err), truncated=True, readable_frames=err.readable)
    except (VideoError, NoFaceError, StoreError, OSError) as err:
        row["error"] = str(err)
    except Exception as err:  # a bug or an unforeseen input: record it and let the batch go on
        log.error("unexpected error on %s:\n%s", source.path, traceback.format_exc())
        row["error"] = f"internal error: {type(err).__name__}: {err}"
    return finish_row(row, "failed", started)


def _already_done(store: ClipStore, source: ClipSource, row: dict, config: PreprocessConfig) -> bool:
    """Same bytes, same config, and whole: the clip passes the store's cheap check (a clip that fails it is
    computed again, never skipped)."""
    if not store.has(source.key):
        return False
    try:
        attrs = store.attrs(source.key)
    except (OSError, ValueError):
        return False  # unreadable metadata: computed again
    if attrs.get("source_sha256") != row["source_sha256"] or attrs.get("config_hash") != row["config_hash"]:
        return False
    if attrs.get("truncated") and not config.accept_truncated:
        return False  # kept under --accept-truncated; without it the file is judged again
    problems = store.check(source.key, stages=False)
    if problems:
        log.warning("%s fails the store's check (%s): preprocessing it again", source.key, "; ".join(problems[:3]))
        return False
    row.update({k: attrs.get(k) for k in ("frames", "fps", "faces_max", "frames_without_face", "truncated",
                                          "readable_frames", "decode_error") if k in attrs})
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
    truncation = {k: row[k] for k in ("truncated", "readable_frames", "decode_error") if k in row}
    with store.write_clip(source.key, expect=clip_arrays(size)) as clip:
        crops = clip.create("crops", (len(reader), size, size, 3), "uint8")
        for start, frames in zip(range(0, len(reader), batch), reader.batches(batch)):
            crops[start : start + len(frames)] = align.crop_faces(frames, boxes[start : start + len(frames)], size)
        clip.put("landmarks", align.landmarks_to_crop(landmarks, boxes, size).astype(np.float32))
        clip.put("boxes", boxes)
        clip.put("has_face", has_face)
        clip.put("faces", faces.astype(np.uint8))
        clip.set_attrs(
            source_path=str(source.path), source_sha256=row["source_sha256"], config_hash=row["config_hash"],
            name=dict(zip(("identity", "video", "clip"), source.names or str(source.key).split("/"))),
            config=config.model_dump(exclude={"batch_size"}), code_version=code_version(),
            preprocess_version=PREPROCESS_VERSION, fps=reader.fps, frames=len(reader),
            source=info.as_dict(), faces_max=int(faces.max()), frames_without_face=int((~has_face).sum()),
            landmarks_space="crop pixels", boxes_space="source-frame pixels, square x0 y0 x1 y1",
            declared_frames=info.declared_frames, **truncation,
        )


@task(name="preprocess-clip", cache_policy=NO_CACHE, task_run_name="preprocess {source.key}")
def preprocess_clip_task(source: ClipSource, store_path: str, config: PreprocessConfig) -> dict:
    """Prefect task around `preprocess_clip`; takes the store's path so it can run in another process (Dask). The row
    goes to the manifest as soon as the clip is done, from wherever it ran."""
    store = ClipStore.open(store_path)
    row = preprocess_clip(source, store, config)
    record_row(store.manifest_path, row)
    return row
