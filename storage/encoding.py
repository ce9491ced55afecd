"""Encoding of one clip: 3DMM parameters (Net3D) and W+ inversions (the encoder) of its crops, into the store.

The plain functions of encode-dataset (`tasks.encode` wraps them in Prefect tasks); they import no Prefect, so the
demo recipe's accelerator mode (`training.demo_recipe`) encodes its world on a machine with torch alone.

Each result is a stage of the clip (`ClipStore.write_stage`), published whole or not at all:

    face3d/      params     float32 [T, 15 + S]  yaw, pitch, roll (deg), jaw, exp_00..10, then S shape coefficients
                 landmarks  float32 [T, 68, 2]   the backend's 68 landmarks in crop pixels
                 found      bool    [T]          the backend could read the face in this frame
                 attrs: backend, layout, config hash, code version
    inversion/   wplus      float16 [T, 14, 512] the encoder's W+ code of each crop (512: its generator's style size)
                 attrs: encoder, its weights' sha256, precision, config hash, code version

A stage whose config hash matches is skipped, so re-runs only do what is missing or changed. The crops are read once
in batches for both stages; networks are loaded once per process and shared by the clips it encodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import traceback
from contextlib import ExitStack
from datetime import datetime, UTC
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from models import MissingWeightsError
from models.directions import ParamRanges
from models.face3d import code_layout
from models.images import to_signed
from models.precision import Precision, autocast
from storage.files import atomic_path
from storage.manifest import finish_row
from storage.networks import face3d_backend
from storage.settings import code_version
from storage.store import ArraySpec, ClipKey, ClipStore
from storage.weights import WeightsRegistry

log = logging.getLogger(__name__)

ENCODE_VERSION = 1  # bump when the arrays this code writes change for the same config
FACE3D, INVERSION = "face3d", "inversion"
STAGES = (FACE3D, INVERSION)
Stage = Literal["face3d", "inversion"]


class EncodeConfig(BaseModel):
    """Everything that decides the encoded arrays (the batch size and device only decide how fast)."""

    stages: list[Stage] = Field(list(STAGES), description="What to compute: 'face3d' (3DMM parameters), 'inversion' (W+).")
    face3d: str = Field("landmark-fit", description="Net3D backend: 'landmark-fit' (offline, real faces), 'synth-regressor' (the synthetic world), 'deca' (the paper's, user weights).")
    encoder: str = Field("e4e-voxceleb256", description="Encoder weights (registry name) that invert crops to W+: 'e4e-voxceleb256' (official) or 'demo-encoder'.")
    weights_dir: str | None = Field(None, description="Weights directory (default: $REENACT_WEIGHTS_DIR, else weights/).")
    precision: Precision = Field("fp32", description="Arithmetic of the encoder on a GPU: fp32, bf16 or fp16 (CPU always runs fp32).")
    batch_size: int = Field(16, ge=1, description="Crops encoded at once.")
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")

    def stage_hash(self, stage: Stage, weights_sha256: str | None = None) -> str:
        """The hash that marks a clip's stage as done with these settings (and these weights' bytes)."""
        fields: dict = {"stage": stage, "version": ENCODE_VERSION}
        if stage == FACE3D:
            fields["backend"] = self.face3d
        else:
            fields.update(encoder=self.encoder, precision=self.precision, weights=weights_sha256)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class Encoders:
    """The networks of one config, loaded once: the Net3D backend and the W+ encoder (each only if its stage runs)."""

    def __init__(self, config: EncodeConfig):
        self.config = config
        self.device = config.resolved_device()
        registry = WeightsRegistry(config.weights_dir)
        self.face3d = None
        self.encoder = None
        self.hashes: dict[str, str] = {}
        if FACE3D in config.stages:
            self.face3d = face3d_backend(registry, config.face3d, device=self.device)
            self.hashes[FACE3D] = config.stage_hash(FACE3D)
        if INVERSION in config.stages:
            self.encoder = registry.get(config.encoder, device=self.device)
            self.encoder_sha256 = registry.sha256(config.encoder)
            self.hashes[INVERSION] = config.stage_hash(INVERSION, self.encoder_sha256)

    @torch.no_grad()
    def invert(self, crops: np.ndarray) -> np.ndarray:
        """uint8 [B, 256, 256, 3] crops -> float16 W+ [B, L, 512]."""
        images = to_signed(crops, self.device)
        with autocast(self.config.precision, self.device):
            wplus = self.encoder(images)
        return wplus.float().cpu().numpy().astype(np.float16)


_cache_lock = threading.Lock()
_cache: dict[str, Encoders] = {}


def encoders_for(config: EncodeConfig) -> Encoders:
    """One `Encoders` per process and config: networks are large and read-only at inference, so threads share them."""
    key = config.model_dump_json(exclude={"batch_size"})
    with _cache_lock:
        if key not in _cache:
            _cache[key] = Encoders(config)
        return _cache[key]


def encode_clip(key: ClipKey, store: ClipStore, config: EncodeConfig) -> dict:
    """Encode one clip's missing or outdated stages; return its manifest row. Clip problems give a `failed` row."""
    started = time.perf_counter()
    row = {"identity": key.identity, "video": key.video, "clip": key.clip, "error": None,
           "face3d_backend": config.face3d if FACE3D in config.stages else None,
           "encoder": config.encoder if INVERSION in config.stages else None}
    try:
        encoders = encoders_for(config)
        clip = store.clip(key)
        damaged = {problem.split(":")[0].removeprefix("stage ") for problem in store.check(key)
                   if problem.startswith("stage ")}
        todo = [stage for stage in config.stages if stage in damaged
                or (store.stage_attrs(key, stage) or {}).get("config_hash") != encoders.hashes[stage]]
        row["stages_written"] = ",".join(todo)
        row["frames"] = len(clip)
        if not todo:
            return finish_row(row, "skipped", started)
        with ExitStack() as stages:
            writers = {stage: stages.enter_context(store.write_stage(key, stage, _expected(stage, encoders), base=clip))
                       for stage in todo}
            _encode_frames(clip, writers, encoders, config)
        return finish_row(row, "ok", started)
    except MissingWeightsError:
        raise  # a setup problem: stop the run
    except Exception as err:  # one clip's problem (unreadable chunk, a backend failure): record it, go on
        log.error("encoding %s failed:\n%s", key, traceback.format_exc())
        row["error"] = f"{type(err).__name__}: {err}"
    return finish_row(row, "failed", started)


def _expected(stage: str, encoders: Encoders) -> dict[str, ArraySpec]:
    """The arrays a stage must hold to be published (None: the clip's frame count)."""
    if stage == FACE3D:
        return {"params": ArraySpec("float32", (None, 15 + encoders.face3d.shape_size)),
                "landmarks": ArraySpec("float32", (None, 68, 2)), "found": ArraySpec("bool", (None,))}
    return {"wplus": ArraySpec("float16", (None, encoders.encoder.style_count, encoders.encoder.style_dim))}


def _encode_frames(clip, writers: dict, encoders: Encoders, config: EncodeConfig) -> None:
    """Read the crops once in batches, fill every stage being written, and set each stage's attributes."""
    frames = len(clip)
    arrays = {}
    if FACE3D in writers:
        size = 15 + encoders.face3d.shape_size
        arrays["params"] = writers[FACE3D].create("params", (frames, size), "float32")
        arrays["landmarks"] = writers[FACE3D].create("landmarks", (frames, 68, 2), "float32")
        arrays["found"] = writers[FACE3D].create("found", (frames,), "bool")
    if INVERSION in writers:
        layers = encoders.encoder.style_count
        arrays["wplus"] = writers[INVERSION].create("wplus", (frames, layers, encoders.encoder.style_dim), "float16")
    for start in range(0, frames, config.batch_size):
        stop = min(start + config.batch_size, frames)
        crops = clip.frames(start, stop)
        if FACE3D in writers:
            estimate = encoders.face3d.estimate(crops, clip.landmarks[start:stop])
            arrays["params"][start:stop] = estimate.to_array()
            arrays["landmarks"][start:stop] = estimate.landmarks.float().cpu().numpy()
            arrays["found"][start:stop] = estimate.found.cpu().numpy()
        if INVERSION in writers:
            arrays["wplus"][start:stop] = encoders.invert(crops)
    common = {"code_version": code_version(), "encode_version": ENCODE_VERSION,
              "written_at": datetime.now(UTC).isoformat(timespec="seconds")}
    if FACE3D in writers:
        writers[FACE3D].set_attrs(
            config_hash=encoders.hashes[FACE3D], backend=encoders.face3d.name,
            layout=code_layout(encoders.face3d.shape_size), angles="degrees, DECA's reading (yaw, pitch, roll)",
            landmarks_space="crop pixels", **common)
    if INVERSION in writers:
        writers[INVERSION].set_attrs(
            config_hash=encoders.hashes[INVERSION], encoder=config.encoder, weights_sha256=encoders.encoder_sha256,
            precision=config.precision if encoders.device.type == "cuda" else "fp32", **common)


# --- the ranges table ------------------------------------------------------------------------------------------------

def ranges_path(store: ClipStore, backend: str) -> Path:
    return store.root / f"ranges-{backend}.npy"


def measure_ranges(store: ClipStore, backend: str, quantiles: tuple[float, float] = (0.0, 1.0)) -> tuple[Path, ParamRanges]:
    """The paper's `extract_statistics`: [min, max] of every face parameter over the frames of the store that
    `backend` could read, written to `<store>/ranges-<backend>.npy` (the official table's [54, 2] layout), which
    maps jaw and expressions to A's shift units for data of this backend."""
    chunks = []
    for key in store.clips():
        attrs = store.stage_attrs(key, FACE3D)
        if not attrs or attrs.get("backend") != backend:
            continue
        stage = store.clip(key).stage(FACE3D)
        found = stage["found"][:]
        chunks.append(stage["params"][:, :15][found])
    if not chunks:
        raise ValueError(f"no clip in {store.root} has face3d parameters from {backend!r}: run encode-dataset first")
    ranges = ParamRanges.measure(np.concatenate(chunks), quantiles)
    path = ranges_path(store, backend)
    with atomic_path(path) as partial:
        with open(partial, "wb") as handle:  # np.save on a path would append '.npy' to the temporary name
            np.save(handle, ranges.table)
    return path, ranges

