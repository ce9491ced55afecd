"""Reenactment of one driving video by one source face, in one pass over the driving video.

    networks = networks_for(config)                                     # G, A, the encoder and the Net3D, loaded once
    source = prepare_source("photo.jpg", 0, config, networks)           # crop, W+ and face parameters
    summary = reenact("driving.mp4", source, "out.mp4", config, networks)   # source=None: self-reenactment

The Prefect tasks at the bottom resolve the networks once from their config (`networks_for`, one set per process)
and hand them to these plain functions.

`reenact` decodes each driving frame once and passes it through stages that run at once in threads, joined by
bounded queues (`tasks.stream.Pipeline`): decode, follow the face (`models.detect.track`: detector on key frames,
68 landmarks in between), crop boxes smoothed over time, crop, Net3D (batched), parameters filled where the face
was not read and smoothed over time, G (+ the Feature Transformer), paste-back or grid, and the H.264 writer in
the caller's thread. The slowest stage sets the pace; memory holds the queues and the centred filters' few frames
of look-ahead, whatever the video's length (`tasks.driving`). The summary gives each stage's seconds and the time
to the first written frame.

`prepare_inputs` gives the source face and the whole driving track (per-frame parameters and boxes, a few hundred
bytes a frame) for code that works on tracks (evaluation); it runs the same analysis stages.

With a clip store, inputs it already holds are read from it instead of recomputed: a video is found by its bytes'
sha256 (at the same frame rate), and its face3d and inversion stages are used when they were written with the same
Net3D and encoder weights. `clip:<identity>/<video>/<clip>` names a store clip directly. `cache=True` first writes
missing inputs into the store (preprocess-dataset's and encode-dataset's own per-clip code), then reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from models import MissingWeightsError
from models.detect import align
from models.detect.base import search_scales
from models.detect.track import FaceTracker
from models.directions import NUM_PARAMS, SHIFT_SCALE, ParamRanges
from models.images import FRAME_SIZE, resize_to, to_pixels, to_signed
from models.precision import Precision, autocast
from models.reenact import Reenactor, RenderPath
from models.stylegan2 import Generator
from models.temporal import false_runs, gaussian_smooth, last_true
from storage.inputs import ClipSource, clip_key_for
from storage.store import ClipKey, ClipReader, ClipStore
from storage.video import VideoError, VideoReader, VideoWriter, probe, read_frame, sha256_file
from storage.weights import (AUTO_SET, WEIGHT_FILES, WeightsRegistry, choose_set, reenaction_set,
                             resolve_weights_dir)
from tasks.driving import (ANALYSIS_BATCH, DrivingFrame, NoReadableFaceError, analysis_stages, batches, decoded,
                           read_faces, smooth_parameters)
from tasks.encode import FACE3D, INVERSION, EncodeConfig, encode_clip, encoders_for
from tasks.preprocess import NoFaceError, PreprocessConfig, decode_batch_size, detector_for, preprocess_clip
from tasks.progress import progress
from tasks.stream import Pipeline, Stage

log = logging.getLogger(__name__)

CLIP_PREFIX = "clip:"  # names a clip of the store instead of a file: clip:id00001/astronaut01/00001
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CROP_SIZE = FRAME_SIZE
DECODE_BATCH = 8  # frames decoded at once (fewer for very large frames)
QUEUE_SIZE = 4  # items waiting between two stages: with the look-ahead, what bounds the frames in memory
Mode = Literal["cross", "self"]


class ReenactInputError(ValueError):
    """A source or driving input that cannot be reenacted; the message names the input and says why."""


class ReenactConfig(BaseModel):
    """Everything that decides a reenacted video (the batch size and device only decide how fast)."""

    weights: str = Field(AUTO_SET, description="Weights set: 'voxceleb256' (the official release), 'demo' (the project's small networks, bundled), or 'auto': voxceleb256 when its files are in the weights directory, else demo (said in one line).")
    face3d: str | None = Field(None, description="Net3D backend that reads pose and expression; default: the one the set's A was trained with (deca for voxceleb256, synth-regressor for demo).")
    truncation: float | None = Field(None, gt=0, le=1, description="Truncation of the shifted W+ towards G's mean w; default: the set's (0.7 as the official inference for voxceleb256, 1 = none for demo).")
    feature_transformer: str | None = Field(None, description="Feature Transformer that refines G's features with the source's detail: a registry name or a train-feature-transformer .safetensors export; 'none' = G alone. Default: the set's (demo-feature-transformer for demo; none for voxceleb256, whose official release has none).")
    weights_dir: str | None = Field(None, description="Weights directory (default: $REENACT_WEIGHTS_DIR, else weights/).")
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    precision: Precision = Field("fp32", description="Arithmetic of the networks on a GPU: fp32, bf16 or fp16 (CPU always runs fp32).")
    batch_size: int | None = Field(None, ge=1, description="Frames generated at once; default 1 on a CPU (StyleGAN2's per-sample convolutions run fastest one image at a time there), 32 on a GPU.")
    smoothing: float = Field(1.0, ge=0, description="Temporal smoothing of the driving face's parameters: Gaussian sigma in frames (0 = off).")
    fps: float | None = Field(None, gt=0, description="Resample the driving video to this frame rate; None keeps its own.")
    detector: str = Field("dlib", description="Face detector: 'dlib' (offline default), 'mtcnn' (facenet-pytorch, batched, on CUDA when present; weights in its wheel) or 'retinaface' (user weights).")
    detect_every: int = Field(8, ge=1, description="Run the face detector on every Nth driving frame (and at scene cuts, and where the followed landmarks degrade); in between, the face is followed by its 68 landmarks from the previous frame. 1 = detect on every frame (slower).")
    grid: bool = Field(False, description="Write source | driving | result side by side instead of the result alone.")
    paste_back: bool = Field(False, description="Blend the generated face into the driving video's full frame: a soft mask inside the face's outline, colours matched at the seam; the rest of the frame is the driver's own.")
    crf: int = Field(18, ge=0, le=51, description="x264 quality of the output (lower is better, larger files).")
    tune_steps: int = Field(0, ge=0, description="Fine-tune a copy of G on the source crop for this many steps before reenacting, so background, hair and identity detail survive (the official inference's optimize_generator, on there by default: 200). 0 = off. About 0.7 s a step on 2 CPU cores for the 256 px G.")
    tune_lpips_weight: float = Field(1.0, ge=0, description="Weight of LPIPS in the tuning loss, beside pixel L2 (official: 1; needs AlexNet's ImageNet weights). 0 tunes on pixels alone and needs no AlexNet.")

    _official_missing: list[str] = PrivateAttr(default_factory=list)  # why 'auto' chose the demo set

    @model_validator(mode="after")
    def _choose_set(self) -> ReenactConfig:
        """'auto' becomes the set it stands for, so that results and done-records name the networks they used;
        `networks_for` says why once, when the networks load."""
        self.weights, self._official_missing = choose_set(self.weights, self.weights_dir)
        return self

    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(fps=self.fps, detector=self.detector, weights_dir=self.weights_dir)

    def encode_config(self) -> EncodeConfig:
        weights = reenaction_set(self.weights)
        return EncodeConfig(stages=[FACE3D, INVERSION], face3d=self.face3d or weights.face3d, encoder=weights.encoder,
                            weights_dir=self.weights_dir, precision=self.precision, batch_size=ANALYSIS_BATCH,
                            device=self.device)

    def output_hash(self) -> str:
        """The hash of the settings that change the output video (a reenacted file records it)."""
        fields = self.model_dump(exclude={"batch_size", "device", "weights_dir"})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# --- the networks ------------------------------------------------------------------------------------------------------

class ReenactNetworks:
    """G and A of a weights set, with the encoder and the Net3D of encode-dataset (shared with it), loaded once."""

    def __init__(self, config: ReenactConfig):
        self.config = config
        weights = reenaction_set(config.weights)
        self.encode_config = config.encode_config()
        self.encoders = encoders_for(self.encode_config)  # the face3d backend and the W+ encoder, cached per process
        self.device = self.encoders.device
        registry = WeightsRegistry(config.weights_dir)
        generator = registry.get(weights.generator, self.device)
        directions, entries = registry.load(weights.directions, self.device)
        # the demo directions carry the table of their own Net3D; the official file uses the official table
        ranges = ParamRanges.of_directions(entries)
        truncation = config.truncation if config.truncation is not None else weights.truncation
        self.feature_transformer = config.feature_transformer or weights.feature_transformer
        if self.feature_transformer == "none":
            self.feature_transformer = None
        transformer = self._transformer(registry, generator, weights.generator)
        self.reenactor = Reenactor(generator, directions, ranges, float(entries.get("shift_scale", SHIFT_SCALE)),
                                   truncation, transformer=transformer).eval()
        # bf16 / fp16 on a GPU: G and the transformer cast to that dtype, with G's fast ops (CPU: fp32 as it is)
        self.reenactor.use_render_path(RenderPath.for_device(config.precision, self.device))
        self.weights_sha256 = {name: registry.sha256(name)
                               for name in (weights.generator, weights.encoder, weights.directions)}
        if self.feature_transformer:
            self.weights_sha256[self.feature_transformer] = registry.sha256(self.feature_transformer) \
                if self.feature_transformer in WEIGHT_FILES else sha256_file(Path(self.feature_transformer))
        self._perceptual = None  # LPIPS for tuning G on a source, loaded on first use
        self._refinement = None  # (weak ref to a source, its image, its SourceDetail): see _refinement_of

    def _transformer(self, registry: WeightsRegistry, generator: Generator, generator_name: str):
        """The Feature Transformer `self.feature_transformer` names (None: G alone), checked to fit G."""
        if self.feature_transformer is None:
            return None
        transformer = registry.load_spec(self.feature_transformer, self.device,
                                         expect="models.feature_transformer:FeatureTransformer")[0]
        try:
            transformer.block(generator)
        except ValueError as err:
            raise ValueError(f"the Feature Transformer {self.feature_transformer} does not fit the generator "
                             f"{generator_name}: {err}; train one for this G (train-feature-transformer), or "
                             "render with G alone: --feature-transformer none") from err
        return transformer

    def batch_size(self, config: ReenactConfig) -> int:
        """Frames G draws at once: the config's, else 32 on a GPU and 1 on a CPU (where that runs fastest). Configs
        that differ only in batch size share these networks, so the rule reads the caller's."""
        return config.batch_size or (32 if self.device.type == "cuda" else 1)

    def _at_generator_size(self, crop: np.ndarray) -> torch.Tensor:
        """A uint8 crop [S, S, 3] as G's image [1, 3, size, size] in [-1, 1] on the networks' device."""
        return resize_to(to_signed(crop[None], self.device), self.reenactor.generator.size)

    def perceptual(self):
        """LPIPS (AlexNet v0.1) for tuning G on a source, loaded on first use from the weights directory."""
        if self._perceptual is None:
            from storage.networks import lpips

            try:
                self._perceptual = lpips(WeightsRegistry(self.config.weights_dir), self.device)
            except MissingWeightsError as err:
                raise MissingWeightsError(f"{err} Or tune G on pixels alone, which needs no AlexNet: "
                                          "--tune-lpips-weight 0.") from None
        return self._perceptual

    @torch.no_grad()
    def generate(self, source: SourceFace, driving_params: np.ndarray) -> np.ndarray:
        """uint8 [B, 256, 256, 3]: the source with each row of driving parameters [B, 15]."""
        wplus = torch.as_tensor(source.wplus[None], dtype=torch.float32, device=self.device)
        params = torch.as_tensor(source.params[None], dtype=torch.float32, device=self.device)
        driving = torch.as_tensor(driving_params, dtype=torch.float32, device=self.device)
        refinement = {}
        if self.reenactor.transformer is not None:
            image, detail = self._refinement_of(source, wplus)
            refinement = {"source_image": image, "source_detail": detail}
        with autocast(self.config.precision, self.device):
            images = self.reenactor(wplus, params, driving, generator=source.generator, **refinement)
        return to_pixels(resize_to(images.float(), CROP_SIZE))  # a small G (the demo's 64 px) fills the crop

    def _refinement_of(self, source: SourceFace, wplus: torch.Tensor):
        """The source crop at G's size and the Feature Transformer's per-source detail, computed once per source
        rather than once per batch (the last source's are kept; a tuned source is another object)."""
        cached = self._refinement
        if cached is not None and cached[0]() is source:
            return cached[1], cached[2]
        image = self._at_generator_size(source.crop)
        with autocast(self.config.precision, self.device):
            detail = self.reenactor.source_detail(wplus, image, source.generator)
        self._refinement = (weakref.ref(source), image, detail)
        return image, detail

    def tuned(self, source: SourceFace, config: ReenactConfig) -> SourceFace:
        """The source with a copy of G tuned on its crop (`config.tune_steps` > 0), rendering its own code as
        reenactment does (truncated); as it is when tuning is off. Tuning runs in fp32 on the networks' device."""
        if config.tune_steps == 0 or source.generator is not None:
            return source
        # imported here: the training loop it shares brings torchvision and more, which untuned runs do not need
        from training.tune_generator import GeneratorTuningConfig, tune_generator

        generator = self.reenactor.generator
        with torch.no_grad():
            code = self.reenactor.truncate(torch.as_tensor(source.wplus[None], device=self.device))
            target = self._at_generator_size(source.crop)
        transformer = self.reenactor.transformer
        render = (lambda network: transformer.render(network, code, code, target)) if transformer is not None \
            else None  # with a Feature Transformer, tune what reenactment draws: G and the transformer on top
        tuning = GeneratorTuningConfig(steps=config.tune_steps, lpips_weight=config.tune_lpips_weight)
        with progress(total=tuning.steps, description=f"tune G on {source.name}", unit="step") as advance:
            tuned, report = tune_generator(generator, code, target, tuning,
                                           self.perceptual() if tuning.lpips_weight else None, render, advance)
        log.info("G tuned on %s in %.1f s: %s", source.name, report["seconds"],
                 ", ".join(f"{term} {report['before'][term]:.4f} -> {value:.4f}"
                           for term, value in report["after"].items()))
        return replace(source, generator=tuned, tuning=report)

    def estimate(self, crops: np.ndarray, landmarks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Face parameters float32 [B, 15] and found [B] of crops (with their crop-space landmarks if known)."""
        estimate = self.encoders.face3d.estimate(crops, landmarks)
        return estimate.to_array()[:, :NUM_PARAMS], estimate.found.cpu().numpy()

    def invert(self, crops: np.ndarray) -> np.ndarray:
        return self.encoders.invert(crops).astype(np.float32)


_lock = threading.Lock()
_networks: dict[str, ReenactNetworks] = {}


def networks_for(config: ReenactConfig) -> ReenactNetworks:
    """One set of networks per process and config (threads share them: inference only), with what this config needs
    beyond them loaded too (LPIPS when G is tuned), so that a missing file fails here, before any video is read."""
    key = config.model_dump_json(include={"weights", "face3d", "truncation", "feature_transformer", "device",
                                          "precision"}) + str(resolve_weights_dir(config.weights_dir))
    with _lock:
        if key not in _networks:
            if config._official_missing:
                log.warning("the official voxceleb256 weights are not all there (missing %s): reenacting with the "
                            "bundled demo set; `reenact weights list --set voxceleb256` says where each file goes",
                            ", ".join(config._official_missing))
            try:
                _networks[key] = ReenactNetworks(config)
            except MissingWeightsError as err:
                if config.weights == "demo":
                    raise
                raise MissingWeightsError(f"{err} To run without the {config.weights} files, reenact with the "
                                          "bundled set: --weights demo.") from None
        networks = _networks[key]
        if config.tune_steps and config.tune_lpips_weight:
            networks.perceptual()
        return networks


# --- the driving video -------------------------------------------------------------------------------------------------

@dataclass
class DrivingTrack:
    """The driving face over time, and where its frames come from (the store's crops, or the video cut anew)."""

    name: str
    params: np.ndarray  # [T, 15] what drives A: filled where the face was not read, then smoothed
    read: np.ndarray  # [T] bool: the face was detected and read in this frame
    fps: float
    boxes: np.ndarray  # [T, 4] crop squares in the video's frame pixels
    video: Path | None  # the file: decoded when the crops are not stored, or for paste-back; its audio is muxed
    resample_fps: float | None  # the rate the frames were sampled at from `video` (None: its own)
    has_audio: bool
    clip: ClipReader | None = None  # the store's clip, when it holds the crops
    inversion: np.ndarray | None = None  # the store's W+ of frame 0 when its inversion stage fits the encoder

    def __len__(self) -> int:
        return len(self.params)

    def batches(self, size: int, full_frames: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(crops [B, 256, 256, 3], the full frames [B, H, W, 3] if asked for, else None), in order."""
        if self.clip is not None and not full_frames:
            yield from ((crops, None) for crops in self.clip.iter_frames(size))
            return
        if self.video is None or not self.video.is_file():
            raise ReenactInputError(f"driving {self.name}: its full frames need the video file, which is not at "
                                    f"{self.video}")
        reader = VideoReader(self.video, fps=self.resample_fps)
        if len(reader) != len(self):
            raise ReenactInputError(f"driving {self.name}: {self.video} decodes to {len(reader)} frames, the store "
                                    f"has {len(self)}")
        for start, frames in zip(range(0, len(self), size), reader.batches(size)):
            stop = start + len(frames)
            crops = self.clip.frames(start, stop) if self.clip is not None else \
                align.crop_faces(frames, self.boxes[start:stop], CROP_SIZE)
            yield crops, (frames if full_frames else None)

    def first_crop(self) -> np.ndarray:
        return next(self.batches(1))[0][0]


def prepare_driving(driving: str, config: ReenactConfig, networks: ReenactNetworks, store: ClipStore | None = None,
                    cache: bool = False) -> DrivingTrack:
    """The whole driving track of a video file, or of a store clip (`clip:identity/video/clip`): the analysis
    stages of `reenact`, with their per-frame results kept (parameters, boxes, read flags)."""
    if driving.startswith(CLIP_PREFIX):
        return _driving_from_store(_store_key(driving, store), store, networks, config, cache)
    path, info = _driving_video(driving)
    if store is not None:
        key = _stored_video(path, config.fps or info.fps, store, config, cache)
        if key is not None:
            return _driving_from_store(key, store, networks, config, cache)
    stream = _analysed_video(path, info, networks, config, keep_images=False)
    params, boxes, read = [], [], []
    with _reading(stream.name), Pipeline(stream.frames, stream.stages, QUEUE_SIZE) as frames:
        for frame in frames:
            params.append(frame.params)
            boxes.append(frame.box)
            read.append(frame.read)
    return DrivingTrack(stream.name, np.stack(params), np.array(read), stream.fps, np.stack(boxes).astype(np.float32),
                        path, config.fps, info.has_audio)


def _driving_from_store(key: ClipKey, store: ClipStore, networks: ReenactNetworks, config: ReenactConfig,
                        cache: bool) -> DrivingTrack:
    clip = store.clip(key)
    attrs = clip.attrs
    video = Path(attrs["source_path"]) if attrs.get("source_path") else None
    has_audio = bool(attrs.get("source", {}).get("has_audio")) and video is not None and video.is_file()
    track = DrivingTrack(f"{CLIP_PREFIX}{key}", np.zeros((len(clip), NUM_PARAMS), np.float32), clip["has_face"][:],
                         float(attrs["fps"]), clip.boxes[:], video, attrs.get("config", {}).get("fps"), has_audio,
                         clip=clip)
    face3d = _stage_if_current(store, key, FACE3D, networks, cache)
    if face3d is not None:
        log.info("driving %s: face parameters from the store", track.name)
        track.read = track.read & face3d["found"][:]
        _fill_and_smooth(track, face3d["params"][:, :NUM_PARAMS], config.smoothing)
    else:
        _read_parameters(track, clip.landmarks[:], networks, config)
    inversion = _stage_if_current(store, key, INVERSION, networks, cache=False)
    if inversion is not None:
        track.inversion = inversion["wplus"][0].astype(np.float32)
    return track


def _read_parameters(track: DrivingTrack, landmarks: np.ndarray, networks: ReenactNetworks,
                     config: ReenactConfig) -> None:
    """Net3D over every crop of the track, in batches, then filled and smoothed into `track.params`."""
    raw = np.zeros((len(track), NUM_PARAMS), np.float32)
    found = np.zeros(len(track), bool)
    for start, (crops, _) in zip(range(0, len(track), ANALYSIS_BATCH), track.batches(ANALYSIS_BATCH)):
        stop = start + len(crops)
        raw[start:stop], found[start:stop] = networks.estimate(crops, landmarks[start:stop])
    track.read = track.read & found
    _fill_and_smooth(track, raw, config.smoothing)


def _fill_and_smooth(track: DrivingTrack, raw: np.ndarray, sigma: float) -> None:
    if not track.read.any():
        raise ReenactInputError(f"driving {track.name}: no frame has a face the Net3D could read")
    held = raw[last_true(track.read)]
    track.params = gaussian_smooth(held, sigma).astype(np.float32)


# --- the source face ---------------------------------------------------------------------------------------------------

@dataclass
class SourceFace:
    """The face to animate: its aligned crop, its W+ code and its face parameters."""

    name: str
    crop: np.ndarray  # uint8 [256, 256, 3]
    wplus: np.ndarray  # float32 [L, style_dim]
    params: np.ndarray  # float32 [15]
    from_store: bool
    generator: Generator | None = None  # a copy of G tuned on this face (`tune_steps`), else G is shared
    tuning: dict | None = None  # what the tuning did: steps, seconds, losses before and after
    scale: float | None = None  # the detection scale its face was found at (an image's; finer for small faces)


def check_request(source: str | None, frame: int, mode: Mode) -> None:
    """The source and mode must agree: cross needs a source, self takes the driving clip's first frame."""
    if mode == "self" and source is not None:
        raise ReenactInputError("self-reenactment takes its source from the driving clip's first frame; "
                                "give no source (or use mode 'cross')")
    if mode == "cross" and source is None:
        raise ReenactInputError("cross-reenactment needs a source: an image, a video (with a frame index) or "
                                f"{CLIP_PREFIX}identity/video/clip")
    if frame < 0:
        raise ReenactInputError(f"source frame must be 0 or more, got {frame}")


def source_of_driving(driving: DrivingTrack, networks: ReenactNetworks) -> SourceFace:
    """The paper's self-reenactment source: the driving clip's first frame, with the smoothed parameters of frame 0
    (so frame 0 of the output is the source's own reconstruction) and the store's W+ when it has one."""
    crop = driving.first_crop()
    stored = driving.inversion is not None
    wplus = driving.inversion if stored else networks.invert(crop[None])[0]
    return SourceFace(f"{driving.name} frame 0", crop, wplus, driving.params[0], from_store=stored)


def prepare_inputs(driving: str, source: str | None, frame: int, mode: Mode, config: ReenactConfig,
                   networks: ReenactNetworks, store: ClipStore | None = None,
                   cache: bool = False) -> tuple[SourceFace, DrivingTrack]:
    """The source face and the driving track of one reenactment. Cross mode reads the source first, so that a
    source without a face fails before the whole driving video is read; G is tuned on the source (`tune_steps`)
    last, once both inputs are known to be good."""
    check_request(source, frame, mode)
    if mode == "self":
        driving_track = prepare_driving(driving, config, networks, store, cache)
        face = source_of_driving(driving_track, networks)
    else:
        face = prepare_source(source, frame, config, networks, store, cache)
        driving_track = prepare_driving(driving, config, networks, store, cache)
    return networks.tuned(face, config), driving_track


def prepare_source(source: str, frame: int, config: ReenactConfig, networks: ReenactNetworks,
                   store: ClipStore | None = None, cache: bool = False) -> SourceFace:
    """The face of `source`: an image, frame `frame` of a video, or a store clip's frame (`clip:...`)."""
    check_request(source, frame, "cross")
    if source.startswith(CLIP_PREFIX):
        return _source_from_store(_store_key(source, store), frame, store, networks)
    path = _readable(source, "source")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _source_from_pixels(str(path), _read_image(path), networks, config)
    try:
        info = probe(path)
    except VideoError as err:
        raise ReenactInputError(f"source {path} is neither an image nor a video: {err}") from err
    if store is not None:
        key = _stored_video(path, config.fps or info.fps, store, config, cache)
        if key is not None:
            return _source_from_store(key, frame, store, networks)
    try:
        image = read_frame(path, frame, fps=config.fps)
    except VideoError as err:
        raise ReenactInputError(f"source video {path}: {err}") from err
    return _source_from_pixels(f"{path} frame {frame}", image, networks, config)


def _source_from_pixels(name: str, image: np.ndarray, networks: ReenactNetworks, config: ReenactConfig) -> SourceFace:
    """Detect the largest face (finer detection scales for a small one), crop it as preprocessing does, read its
    parameters and invert it."""
    faces, scale = search_scales(detector_for(config.preprocess_config()), image)
    if not faces:
        raise ReenactInputError(f"source {name}: no face found")
    face = max(faces, key=lambda found: found.area)
    box = align.crop_box(face.landmarks)
    crop = align.crop_face(image, box, CROP_SIZE)
    landmarks = align.landmarks_to_crop(face.landmarks[None], box[None], CROP_SIZE)
    params, found = networks.estimate(crop[None], landmarks)
    if not found[0]:
        raise ReenactInputError(f"source {name}: the {networks.encode_config.face3d} backend could not read the face")
    return SourceFace(name, crop, networks.invert(crop[None])[0], params[0], from_store=False, scale=scale)


def _source_from_store(key: ClipKey, frame: int, store: ClipStore, networks: ReenactNetworks) -> SourceFace:
    clip = store.clip(key)
    if frame >= len(clip):
        raise ReenactInputError(f"source {CLIP_PREFIX}{key} has {len(clip)} frames (0 to {len(clip) - 1}); "
                                f"there is no frame {frame}")
    crop = clip.frames(frame, frame + 1)[0]
    face3d = _stage_if_current(store, key, FACE3D, networks, cache=False)
    inversion = _stage_if_current(store, key, INVERSION, networks, cache=False)
    if face3d is not None and face3d["found"][frame]:
        params = face3d["params"][frame, :NUM_PARAMS]
    else:
        params, found = networks.estimate(crop[None], clip.landmarks[frame:frame + 1])
        if not found[0]:
            raise ReenactInputError(f"source {CLIP_PREFIX}{key} frame {frame}: the "
                                    f"{networks.encode_config.face3d} backend could not read the face")
        params = params[0]
    wplus = inversion["wplus"][frame] if inversion is not None else networks.invert(crop[None])[0]
    return SourceFace(f"{CLIP_PREFIX}{key} frame {frame}", crop, np.asarray(wplus, np.float32),
                      np.asarray(params, np.float32), from_store=inversion is not None)


# --- the store ---------------------------------------------------------------------------------------------------------

def _store_key(text: str, store: ClipStore | None) -> ClipKey:
    if store is None:
        raise ReenactInputError(f"{text} names a store clip: give the store too")
    key = ClipKey.parse(text[len(CLIP_PREFIX):])
    if not store.has(key):
        raise ReenactInputError(f"{text} is not in the store {store.root}")
    return key


def _stored_video(path: Path, fps: float, store: ClipStore, config: ReenactConfig, cache: bool) -> ClipKey | None:
    """The store's clip of this file at this frame rate; with `cache`, preprocess it into the store first."""
    digest = sha256_file(path)
    for key in store.find_source(digest):
        attrs = store.attrs(key)
        if abs(float(attrs.get("fps", 0)) - fps) < 1e-3 and attrs.get("config", {}).get("crop_size") == CROP_SIZE:
            log.info("%s: using the store's clip %s", path, key)
            return key
    if not cache:
        return None
    key = clip_key_for(path)
    if store.has(key):  # caching must never replace a clip the store already holds (and its stages)
        fps_there = store.attrs(key).get("fps")
        raise ReenactInputError(f"{path}: the store {store.root} already holds {key} (at {fps_there} fps, from "
                                f"{store.attrs(key).get('source_path')}); give --fps {fps_there} to use it, or "
                                "run without --cache")
    row = preprocess_clip(ClipSource(key, path), store, config.preprocess_config())
    if row["status"] == "failed":
        raise ReenactInputError(f"{path}: {row['error']}")
    return key


def _stage_if_current(store: ClipStore, key: ClipKey, stage: str, networks: ReenactNetworks, cache: bool):
    """The clip's stage group when it was written with these networks; with `cache`, write it first."""
    wanted = networks.encoders.hashes[stage]
    if (store.stage_attrs(key, stage) or {}).get("config_hash") != wanted and cache:
        encode_clip(key, store, networks.encode_config.model_copy(update={"stages": [stage]}))
    if (store.stage_attrs(key, stage) or {}).get("config_hash") != wanted:
        return None
    return store.clip(key).stage(stage)


# --- the driving video as a stream -----------------------------------------------------------------------------------

@dataclass
class DrivingStream:
    """Where a driving video's frames come from, and the stages that bring them to parameters."""

    name: str
    fps: float
    frames_count: int
    video: Path | None  # the file whose audio is muxed (None: no file at hand)
    has_audio: bool
    frames: Iterable[DrivingFrame]  # what the first stage reads
    stages: list[Stage]  # from the frames to DrivingFrame.params (and .crop, .box, .outline; .image if kept)
    from_store: bool = False
    inversion: np.ndarray | None = None  # the store's W+ of frame 0 when its inversion stage fits the encoder
    tracker: FaceTracker | None = None  # the face's follower (video files)


def _driving_video(text: str) -> tuple[Path, object]:
    path = _readable(text, "driving video")
    try:
        return path, probe(path)
    except VideoError as err:
        raise ReenactInputError(f"driving video {path}: {err}") from err


def _analysed_video(path: Path, info, networks: ReenactNetworks, config: ReenactConfig,
                    keep_images: bool) -> DrivingStream:
    """A video file decoded once and analysed as it streams: follow the face, crop, Net3D, parameters."""
    reader = VideoReader(path, fps=config.fps)
    preprocess = config.preprocess_config()
    tracker = FaceTracker(detector_for(preprocess), config.detect_every)
    stages = [Stage("decode", lambda frames: frames)] + analysis_stages(
        tracker, preprocess.box_smoothing, config.smoothing, networks.estimate, keep_images)
    return DrivingStream(str(path), reader.fps, len(reader), path, info.has_audio,
                         decoded(reader, decode_batch_size(info, DECODE_BATCH)), stages, tracker=tracker)


def _stored_stream(key: ClipKey, store: ClipStore, networks: ReenactNetworks, config: ReenactConfig, cache: bool,
                   keep_images: bool) -> DrivingStream:
    """A store clip's crops (and its face3d stage when current), and its video's frames for paste-back."""
    clip = store.clip(key)
    attrs = clip.attrs
    name = f"{CLIP_PREFIX}{key}"
    video = Path(attrs["source_path"]) if attrs.get("source_path") else None
    has_audio = bool(attrs.get("source", {}).get("has_audio")) and video is not None and video.is_file()
    face3d = _stage_if_current(store, key, FACE3D, networks, cache)
    inversion = _stage_if_current(store, key, INVERSION, networks, cache=False)
    reader = None
    if keep_images:
        if video is None or not video.is_file():
            raise ReenactInputError(f"driving {name}: its full frames need the video file, which is not at {video}")
        reader = VideoReader(video, fps=attrs.get("config", {}).get("fps"))
        if len(reader) != len(clip):
            raise ReenactInputError(f"driving {name}: {video} decodes to {len(reader)} frames, the store has "
                                    f"{len(clip)}")
    if face3d is not None:
        log.info("driving %s: face parameters from the store", name)
    stages = [Stage("read store", lambda frames: frames)]
    if face3d is None:
        stages.append(Stage("read faces", lambda frames: read_faces(frames, networks.estimate, ANALYSIS_BATCH)))
    stages.append(Stage("parameters", lambda frames: smooth_parameters(frames, config.smoothing)))
    return DrivingStream(name, float(attrs["fps"]), len(clip), video, has_audio,
                         _stored_frames(clip, face3d, reader), stages, from_store=True,
                         inversion=None if inversion is None else inversion["wplus"][0].astype(np.float32))


def _stored_frames(clip: ClipReader, face3d, reader: VideoReader | None) -> Iterator[DrivingFrame]:
    """DrivingFrames of a store clip: its crops, boxes and landmarks (the frame's, or filled, for paste-back), its
    stored readings when the face3d stage is current; the video's frames alongside when pasting back."""
    boxes, landmarks, has_face = clip.boxes[:], clip.landmarks[:], clip["has_face"][:]
    readings = None if face3d is None else (face3d["params"][:, :NUM_PARAMS], face3d["found"][:])
    images = (image for frames in reader.batches(DECODE_BATCH) for image in frames) if reader is not None else None
    index = 0
    for crops in clip.iter_frames(ANALYSIS_BATCH):
        for crop in crops:
            seen = landmarks[index] if has_face[index] else np.full((68, 2), np.nan, np.float32)
            frame = DrivingFrame(index, image=next(images) if images is not None else None, box=boxes[index],
                                 crop=crop, crop_landmarks=seen,
                                 outline=align.landmarks_to_frame(landmarks[index], boxes[index], CROP_SIZE),
                                 landmarks=None if not has_face[index] else seen)
            if readings is not None:
                frame.raw, frame.read = readings[0][index], bool(readings[1][index] and has_face[index])
            yield frame
            index += 1


def _open_driving(driving: str, networks: ReenactNetworks, config: ReenactConfig, store: ClipStore | None,
                  cache: bool) -> DrivingStream:
    if driving.startswith(CLIP_PREFIX):
        return _stored_stream(_store_key(driving, store), store, networks, config, cache, config.paste_back)
    path, info = _driving_video(driving)
    if store is not None:
        key = _stored_video(path, config.fps or info.fps, store, config, cache)
        if key is not None:
            return _stored_stream(key, store, networks, config, cache, config.paste_back)
    return _analysed_video(path, info, networks, config, keep_images=config.paste_back)


class _reading:
    """Analysis errors of a driving video as the input errors they are, naming the video."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, (NoFaceError, NoReadableFaceError)):
            raise ReenactInputError(f"driving {self.name}: {exc}") from exc
        return False


# --- the output --------------------------------------------------------------------------------------------------------

class RenderedVideo(BaseModel):
    """What `reenact` wrote and how: the video, its inputs, the networks, the faces missed, the time per stage."""

    output: str
    frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    source: str
    driving: str
    source_from_store: bool
    driving_from_store: bool
    frames_without_face: int
    stretches_without_face: list[tuple[int, int]]  # (first, last) frames of each run without a readable face
    weights: str
    face3d: str
    device: str
    config_hash: str
    seconds_render: float
    seconds_to_first_frame: float  # from the start of `reenact` to the first frame handed to the encoder
    first_frame_at: float  # wall-clock time (epoch seconds) of the first written frame
    stage_seconds: dict[str, float]  # per stage of the stream: seconds in its own work (they overlap)
    face_scale: float | None = None  # detection scale of the driving face (finer than the working one: small)
    source_face_scale: float | None = None
    detections: dict[str, int] | None = None  # frames where the detector ran on the driving video, by reason
    tuning: dict | None = None  # G tuned on the source (tune_steps): steps, seconds, losses before and after
    feature_transformer: str | None = None  # what refined G's features (None: G alone)


def reenact(driving: str, source: SourceFace | None, output: str | Path, config: ReenactConfig,
            networks: ReenactNetworks, store: ClipStore | None = None, cache: bool = False,
            threaded: bool = True) -> RenderedVideo:
    """Reenact `driving` (a video file, or `clip:identity/video/clip` of `store`) with `source` (None: the paper's
    self-reenactment, the driving clip's first frame) into `output`: H.264 at the driving fps, its audio muxed.

    One pass over the driving frames, its stages overlapped (module docstring). The file appears only when it is
    complete; a failure in any stage stops them all and leaves nothing at `output`. Returns what was rendered.
    `threaded=False` runs the same stages one after another in this thread (to measure what the overlap gains)."""
    started = time.perf_counter()
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise ReenactInputError(f"output must be an .mp4 file, got {output}")
    stream = _open_driving(driving, networks, config, store, cache)
    rendering = _Rendering(source, stream, networks, config)
    stages = stream.stages + [Stage("generate", rendering.generate), Stage("compose", rendering.compose)]
    read: list[bool] = []
    first_frame_s, first_frame_at, size = None, None, None
    pipeline = Pipeline(stream.frames, stages, QUEUE_SIZE, threaded=threaded)
    with ExitStack() as stack, _reading(stream.name), pipeline as frames, \
            progress(stream.frames_count, f"reenact {stream.name}", unit="frame") as advance:
        writer = None
        for frame in frames:
            if writer is None:
                size = (frame.picture.shape[1], frame.picture.shape[0])
                writer = stack.enter_context(VideoWriter(
                    output, stream.fps, size, audio_from=stream.video if stream.has_audio else None,
                    crf=config.crf, audio_seconds=stream.frames_count / stream.fps))
            writer.write(frame.picture)
            if first_frame_s is None:
                first_frame_s, first_frame_at = time.perf_counter() - started, time.time()
            read.append(frame.read)
            advance()
    seconds = time.perf_counter() - started
    read = np.array(read, bool)
    stage_seconds = {**pipeline.seconds, "encode": pipeline.consumer_seconds}
    log.info("reenacted %s: %d frames in %.1f s (%.1f frames/s), first frame after %.2f s; stages: %s", stream.name,
             len(read), seconds, len(read) / seconds, first_frame_s,
             ", ".join(f"{name} {value:.1f} s" for name, value in stage_seconds.items()))
    tracker = stream.tracker
    return RenderedVideo(
        output=str(output), frames=len(read), fps=stream.fps, has_audio=stream.has_audio, width=size[0],
        height=size[1], source=rendering.source.name, driving=stream.name,
        source_from_store=rendering.source.from_store, driving_from_store=stream.from_store,
        frames_without_face=int((~read).sum()), stretches_without_face=false_runs(read), weights=config.weights,
        face3d=networks.encode_config.face3d, device=str(networks.device),
        feature_transformer=networks.feature_transformer, config_hash=config.output_hash(), seconds_render=seconds,
        seconds_to_first_frame=first_frame_s, first_frame_at=first_frame_at, stage_seconds=stage_seconds,
        face_scale=tracker.scale if tracker is not None else None, source_face_scale=rendering.source.scale,
        detections=dict(tracker.detections) if tracker is not None else None, tuning=rendering.source.tuning)


class _Rendering:
    """The last two stages: G draws the source with each frame's parameters; the picture is composed (the result,
    pasted back into the driving frame, or beside the source and the driving crop). In self-reenactment the source
    is made from the first frame to arrive, the driving clip's frame 0, with its smoothed parameters (so frame 0 of
    the output is the source's own reconstruction) and the store's W+ when it has one."""

    def __init__(self, source: SourceFace | None, stream: DrivingStream, networks: ReenactNetworks,
                 config: ReenactConfig):
        self.source = source
        self.stream = stream
        self.networks = networks
        self.config = config
        self._source_panel = None  # the source crop at the output's height, resized once

    def generate(self, frames: Iterable[DrivingFrame]) -> Iterator[DrivingFrame]:
        for group in batches(frames, self.networks.batch_size(self.config), first=1):
            if self.source is None:
                self.source = self._source_of_first(group[0])
            generated = self.networks.generate(self.source, np.stack([frame.params for frame in group]))
            for frame, picture in zip(group, generated):
                frame.generated = picture
                yield frame

    def _source_of_first(self, frame: DrivingFrame) -> SourceFace:
        stored = self.stream.inversion is not None
        wplus = self.stream.inversion if stored else self.networks.invert(frame.crop[None])[0]
        face = SourceFace(f"{self.stream.name} frame 0", frame.crop, wplus, frame.params, from_store=stored)
        return self.networks.tuned(face, self.config)

    def compose(self, frames: Iterable[DrivingFrame]) -> Iterator[DrivingFrame]:
        for frame in frames:
            result, driving = frame.generated, frame.crop
            if self.config.paste_back:
                result = align.paste_face(frame.image, result, frame.box, frame.outline)
                driving = frame.image
            if self.config.grid:
                if self._source_panel is None:
                    self._source_panel = _at_height(self.source.crop[None], result.shape[0])[0]
                result = np.concatenate([self._source_panel, _at_height(driving[None], result.shape[0])[0], result],
                                        axis=1)
            frame.picture = _even(result[None])[0]
            frame.image = frame.crop = frame.generated = None  # the writer needs the picture alone
            yield frame


def _at_height(images: np.ndarray, height: int) -> np.ndarray:
    """Images [B, H, W, 3] resized (bicubic) to `height`, keeping their aspect; as they are when already that high."""
    if images.shape[1] == height:
        return images
    width = round(images.shape[2] * height / images.shape[1])
    return np.stack([np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC)) for image in images])


def _even(frames: np.ndarray) -> np.ndarray:
    """Frames with even sides (H.264 in yuv420p needs them): an odd last row or column is repeated."""
    height, width = frames.shape[1:3]
    if height % 2 == 0 and width % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


# --- small helpers -----------------------------------------------------------------------------------------------------

def _readable(text: str, what: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ReenactInputError(f"{what} {path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ReenactInputError(f"{what} {path} cannot be read: {err.strerror}") from err
    return path


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ReenactInputError(f"source {path} is not a readable image: {err}") from err


# --- Prefect tasks -----------------------------------------------------------------------------------------------------

@task(name="prepare-source", cache_policy=NO_CACHE)
def prepare_source_task(source: str, frame: int, config: ReenactConfig, store: str | None, cache: bool) -> SourceFace:
    """The source face, with G tuned on it when asked (`tune_steps`)."""
    networks = networks_for(config)
    return networks.tuned(prepare_source(source, frame, config, networks, _open_store(store, cache), cache), config)


@task(name="reenact-stream", cache_policy=NO_CACHE)
def reenact_task(driving: str, source: SourceFace | None, output: str, config: ReenactConfig, store: str | None,
                 cache: bool) -> RenderedVideo:
    return reenact(driving, source, output, config, networks_for(config), _open_store(store, cache), cache)


def _open_store(path: str | None, cache: bool) -> ClipStore | None:
    if path is None:
        if cache:
            raise ReenactInputError("cache needs a store to write to")
        return None
    return ClipStore.open(path, create=cache)
