"""Evaluation of a weights set on a test split of a clip store: the paper's self- and cross-reenactment protocols.

    config = EvaluateConfig(store="vox1.zarr", out="outputs/evaluation", reenact=ReenactConfig(weights="demo"))
    plan = plan_evaluation(config)                          # the split and the pairs; config.json and pairs/ written
    evaluation = evaluate_pair(pair, "self", config)        # one row per generated frame, Inception features
    clips = clip_means(frames); summary = metric_summary(frames, plan.networks)

Per pair the source (self: the driving clip's first frame) performs chosen frames of the driving clip through the
reenactment code itself (`tasks.reenact`: `prepare_inputs`, `ReenactNetworks.generate`), in memory, and each
generated frame is measured against its driving frame, which in self-reenactment is the ground truth:

    csim            identity embedding of the result vs the source crop
    csim_driving    ... vs the driving frame (self: the ground truth; cross: how much of the driver's identity leaks)
    identity_retrieval  1 when the result's identity embedding is nearest to the source among one face of every
                    person of the split (`identity_gallery`), else 0; NaN for a source outside the store
    lpips           result vs the driving frame (self only: cross has no ground truth; NaN with lpips=False)
    pixel           mean |result - driving frame| of 0-255 pixels at the 256 crop (self only); static_pixel: the
                    Δp = 0 render's
    inversion       mean |G(E(source)) - source crop| of 0-255 pixels: the source's own code rendered by G alone (no
                    A, no Feature Transformer), what the encoder's inversion keeps of the face (one value per pair)
    apd*, aed*      the Net3D's reading of the result vs its reading of the driving frame
    static_apd*, static_aed*    the baseline of doing nothing: the source rendered with Δp = 0, read, vs the same
    truth_apd*, truth_aed*                with the synthetic world's truth: the result's reading vs the true parameters
    static_truth_apd*, static_truth_aed*  ... the Δp = 0 render's reading vs the true parameters
    driving_truth_apd*, driving_truth_aed*  the Net3D's reading of the real driving frame vs the truth (its own error)

A result whose face the Net3D cannot read has NaN APD / AED (`result_found` False), counted as `n_missing` in the
summary, never dropped. FID and KID compare the Inception features of a protocol's results with its driving frames.
Every figure names the network that measured it. The output folder (`out`):

    config.json              the resolved config, seeds, weights set and sha256s, the networks, the AED ranges table
    pairs/<protocol>.parquet the exact pairs (`tasks.protocols.write_pairs`)
    frames.parquet           one row per generated frame (FRAME_ID_COLUMNS, found flags, the metrics above)
    clips.parquet            one row per pair: status, error, frames, the mean of every metric and flag
    distribution.parquet     per protocol: DISTRIBUTION_COLUMNS
    linearity.parquet        per direction: `fit_linearity`'s table; linearity_sweep.parquet: the raw sweep
    samples/<protocol>/<pair>.png   source | driving | result, one row per frame, for the first pairs
    summary.json             per protocol and metric: mean, std, n, n_missing, network; FID/KID; the environment

Several weights sets (`flows.evaluate.evaluate_sets`) give one such folder per set, `<out>/<label>/`, and
`<out>/sets.json` (the labels in order, each set's weights and weights directory), written last. config.json is
`RunRecord`; summary.json and sets.json are `tasks.evaluation_summary`'s models, read back by the same classes.

Every file is written whole or not at all; a rerun into the same folder first removes the previous run's files of
this list (and nothing else), and writes summary.json last, so its presence marks a complete run.
"""

from __future__ import annotations

import math
import platform
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, field_validator

from models import MissingWeightsError
from models.directions import PARAM_NAMES, ParamRanges
from storage.files import atomic_path
from storage.settings import PROJECT_ROOT
from storage.store import ClipKey, ClipStore
from storage.weights import UnknownWeightsError, reenaction_set
from tasks.encode import ranges_path
from tasks.evaluation_summary import (SUMMARY_FILE, DistributionScores, Environment, EvaluationSummary,
                                      FacesFound, JsonFile, LinearitySummary, MetricStatistics, Networks,
                                      ProtocolSummary, WeightsRecord)
from tasks.metrics import (DEFAULT_MAGNITUDES, MetricNetworks, MetricsConfig, csim, distribution_scores,
                           expression_distance, fit_linearity, identity_retrieval, inception_features, lpips,
                           metric_networks, pose_distance, sweep_directions)
from storage.settings import code_version
from tasks.protocols import ReenactPair, cross_pairs, self_pairs, split_clips, write_pairs
from models.images import resize_to, to_pixels
from tasks.reenact import (CLIP_PREFIX, CROP_SIZE, ReenactConfig, ReenactInputError, ReenactNetworks, SourceFace,
                           networks_for, prepare_inputs)

Protocol = Literal["self", "cross"]
PROTOCOLS: tuple[Protocol, ...] = ("self", "cross")
FRAME_ID_COLUMNS = ["protocol", "pair", "source", "source_frame", "driving", "frame"]
FOUND_COLUMNS = ["result_found", "static_found", "driving_found"]  # the Net3D read that face
PAIR_COLUMNS = ["protocol", "pair", "source", "driving"]
DISTRIBUTION_COLUMNS = list(DistributionScores.model_fields)
NETWORK_OF_FAMILY = {"csim": "identity", "retrieval": "identity", "lpips": "lpips", "apd": "net3d", "aed": "net3d",
                     "pixel": None, "inversion": None}  # pixel differences: no network
NOT_IN_CROSS = ("lpips", "pixel", "static_pixel")  # cross-reenactment has no ground-truth frame to compare with

CONFIG_FILE, FRAMES_FILE, CLIPS_FILE = "config.json", "frames.parquet", "clips.parquet"
DISTRIBUTION_FILE, LINEARITY_FILE, SWEEP_FILE = "distribution.parquet", "linearity.parquet", "linearity_sweep.parquet"
PAIRS_DIR, SAMPLES_DIR = "pairs", "samples"
TRUTH_KEYS = ["identity", "video", "clip", "frame"]


class EvaluateConfig(BaseModel):
    """Everything that decides an evaluation (the device and batch sizes inside `reenact` and `metrics` only decide
    how fast)."""

    store: str = Field(..., description="The clip store to evaluate on (preprocess-dataset's; encode-dataset's stages are used when current).")
    out: str = Field("outputs/evaluation", description="Folder for the results (a rerun replaces them).")
    protocols: list[Protocol] = Field(list(PROTOCOLS), description="'self' (each clip's first frame performs the clip's other frames; compared with them) and/or 'cross' (random pairs of two identities); repeat the option for both.", json_schema_extra={"option": "protocol"})
    identities: list[str] | None = Field(None, description="The test split: these identities' clips (default: every clip of the store); repeat the option for several.", json_schema_extra={"option": "identity"})
    max_clips: int | None = Field(50, ge=0, description="Self protocol: at most this many clips of the split, a seeded choice (0 or None: all).")
    cross_count: int = Field(50, ge=1, description="Cross protocol: random (source, driving) pairs of two identities, drawn with the seed.")
    frames_per_clip: int | None = Field(None, ge=1, description="Evaluate at most this many driving frames per pair, evenly spaced (None: every frame).")
    seed: int = Field(0, description="Seed of the pair draws (self subset, cross pairs) and of the linearity sources.")
    truth: str | None = Field(None, description="The synthetic world's truth.parquet (make-synthetic-dataset): also measure pose and expression errors against the true parameters.")
    fid: bool = Field(True, description="FID and KID per protocol (Inception-v3 features of every result and driving frame: the slowest metric on a CPU).")
    lpips: bool = Field(True, description="LPIPS in self-reenactment (needs AlexNet's ImageNet file, alexnet-owt-7be5be79.pth); off: not measured (NaN).")
    linearity: bool = Field(True, description="Sweep each direction of A on a few source W+ of the split and fit the response (slope, R², cross-talk).")
    linearity_sources: int = Field(4, ge=1, description="Linearity: clips whose first frame's W+ is swept.")
    linearity_directions: list[str] = Field(list(PARAM_NAMES), min_length=1, description="Linearity: the directions to sweep.")
    linearity_magnitudes: list[float] = Field(list(DEFAULT_MAGNITUDES), min_length=1, description="Linearity: the requested shifts, in A's units.")
    samples: int = Field(4, ge=0, description="Sample grids (source | driving | result) for this many pairs per protocol.")
    sample_frames: int = Field(4, ge=1, description="Frames (rows) per sample grid.")
    reenact: ReenactConfig = Field(default_factory=ReenactConfig, description="The networks that reenact: weights set, Net3D, device, precision, batch size.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="The networks that measure: identity embedder, LPIPS, Inception; KID sampling.")

    @field_validator("protocols")
    @classmethod
    def _distinct(cls, protocols: list[str]) -> list[str]:
        if not protocols:
            raise ValueError("give at least one protocol: self, cross")
        return list(dict.fromkeys(protocols))

    @field_validator("linearity_directions")
    @classmethod
    def _known_directions(cls, directions: list[str]) -> list[str]:
        unknown = sorted(set(directions) - set(PARAM_NAMES))
        if unknown:
            raise ValueError(f"unknown directions {unknown}; choose from {', '.join(PARAM_NAMES)}")
        return directions


# --- the plan ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluationPlan:
    """What one evaluation runs on and with: the split's clips, the pairs per protocol, the networks' names."""

    clips: list[ClipKey]
    pairs: dict[str, list[ReenactPair]]
    networks: Networks
    weights_sha256: dict[str, str]
    aed_ranges: str  # where AED's min-max table comes from


def plan_evaluation(config: EvaluateConfig) -> EvaluationPlan:
    """Check the store, the split and the truth, load every network (a setup problem stops the run before any
    pair), draw the pairs, clear a previous run's results and write config.json and pairs/."""
    store, clips = check_request(config)
    draws = {"self": lambda: seeded_subset(self_pairs(store, clips), config.max_clips, config.seed),
             "cross": lambda: cross_pairs(store, config.cross_count, config.seed, clips)}
    pairs = {protocol: draws[protocol]() for protocol in config.protocols}
    measuring = Measuring.of(config)
    plan = EvaluationPlan(clips, pairs, measuring_networks(config, measuring), measuring.networks.weights_sha256,
                          measuring.ranges_source)
    out = Path(config.out)
    clear_previous(out)
    run_record(config, plan, measuring).write(out)
    for protocol, chosen in pairs.items():
        write_pairs(chosen, out / PAIRS_DIR / f"{protocol}.parquet")
    return plan


class ResolvedSettings(BaseModel):
    """What the config's defaults resolved to."""

    face3d: str
    truncation: float
    shift_scale: float
    device: str
    metrics_device: str


class Split(BaseModel):
    identities: list[str]
    clips: list[str]  # identity/video/clip


class RunRecord(JsonFile):
    """config.json: the config as given, what its defaults resolved to, the weights, networks, seeds and split."""

    FILE: ClassVar[str] = CONFIG_FILE

    config: EvaluateConfig
    resolved: ResolvedSettings
    weights: WeightsRecord
    networks: Networks
    aed_ranges: str
    seeds: dict[str, int]  # pairs, kid
    split: Split


def run_record(config: EvaluateConfig, plan: EvaluationPlan, measuring: Measuring) -> RunRecord:
    networks = measuring.networks
    return RunRecord(
        config=config, weights=WeightsRecord(set=config.reenact.weights, sha256=plan.weights_sha256),
        resolved=ResolvedSettings(face3d=networks.encode_config.face3d, truncation=networks.reenactor.truncation,
                                  shift_scale=networks.reenactor.shift_scale, device=str(networks.device),
                                  metrics_device=str(measuring.metrics.device)),
        networks=plan.networks, aed_ranges=plan.aed_ranges, seeds={"pairs": config.seed, "kid": config.metrics.seed},
        split=Split(identities=sorted({key.identity for key in plan.clips}), clips=[str(key) for key in plan.clips]))


def check_request(config: EvaluateConfig) -> tuple[ClipStore, list[ClipKey]]:
    """The store and the split's clips, the truth table checked against them; an error names what is wrong."""
    store = ClipStore.open(config.store, create=False)
    clips = split_clips(store, config.identities)
    if not clips:
        raise ValueError(f"the store {store.root} holds no clips")
    if config.truth is not None:
        _check_truth(config.truth, store, clips)
    return store, clips


def seeded_subset(items: list, count: int | None, seed: int) -> list:
    """At most `count` of `items`: a seeded choice, kept in their order (all of them when there are no more, or
    when `count` is None or 0)."""
    if not count or len(items) <= count:
        return list(items)
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), count, replace=False))
    return [items[index] for index in chosen]


def measuring_networks(config: EvaluateConfig, measuring: Measuring) -> Networks:
    """The name of every network behind a figure (LPIPS loaded here when measured: its missing file fails with the
    way to go without)."""
    networks, metrics = measuring.networks, measuring.metrics
    weights = reenaction_set(config.reenact.weights)
    return Networks(identity=metrics.identity.name, lpips=_lpips_network(config, metrics),
                    inception=metrics.inception.name if config.fid else None, net3d=networks.encode_config.face3d,
                    generator=weights.generator, encoder=weights.encoder, directions=weights.directions,
                    feature_transformer=networks.feature_transformer)


def _lpips_network(config: EvaluateConfig, metrics: MetricNetworks) -> str | None:
    """LPIPS's name when self-reenactment measures it; its missing file is an error that says how to go without."""
    if "self" not in config.protocols or not config.lpips:
        return None
    try:
        return metrics.lpips.name
    except MissingWeightsError as err:
        raise MissingWeightsError(f"{err} Or evaluate without LPIPS: --no-lpips.") from None


def aed_ranges(config: EvaluateConfig, networks: ReenactNetworks) -> tuple[ParamRanges, str]:
    """AED's min-max table: the store's own for the Net3D (`ranges-<backend>.npy`, encode-dataset's), else the
    table of A's units that the weights set carries."""
    path = ranges_path(ClipStore.open(config.store, create=False), networks.encode_config.face3d)
    if path.is_file():
        return ParamRanges.load(path), str(path)
    return networks.reenactor.ranges, f"the {config.reenact.weights} directions' table"


# --- several weights sets ---------------------------------------------------------------------------------------------

SET_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def weights_choices(choices: list[str], weights_dir: str | None = None) -> dict[str, tuple[str, str | None]]:
    """`[LABEL=]SET[@WEIGHTS_DIR]` choices (the --weights option) -> {label: (set, weights directory)}: the label
    defaults to the set's name, the directory to `weights_dir`. Labels name folders, so they must be distinct."""
    sets: dict[str, tuple[str, str | None]] = {}
    for choice in choices:
        label, has_label, rest = choice.partition("=")
        name, has_dir, directory = (rest if has_label else choice).partition("@")
        label = label if has_label else name
        reenaction_set(name)  # an unknown set is named with the known ones
        if not SET_LABEL.fullmatch(label):
            raise ValueError(f"--weights {choice!r}: the label {label!r} names a folder: letters, digits, '.', '_', "
                             f"'-' only")
        if label in sets:
            raise ValueError(f"--weights: {label!r} twice; give each set its own label, LABEL=SET[@WEIGHTS_DIR]")
        sets[label] = (name, directory if has_dir else weights_dir)
    return sets


# --- the truth of a synthetic world -----------------------------------------------------------------------------------

def read_truth(path: str | Path, key: ClipKey | None = None) -> dict[str, np.ndarray]:
    """True parameters float64 [T, 15] (`PARAM_NAMES` order) per clip name `identity/video/clip`, from
    make-synthetic-dataset's truth.parquet (only `key`'s rows when given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"truth table not found: {path}")
    columns = [*TRUTH_KEYS, *PARAM_NAMES]
    filters = None if key is None else [("identity", "==", key.identity), ("video", "==", key.video),
                                        ("clip", "==", key.clip)]
    try:
        table = pd.read_parquet(path, columns=columns, filters=filters)
    except (KeyError, ValueError) as err:  # pyarrow names the missing column
        raise ValueError(f"{path} is not a truth table with columns {', '.join(columns)}: {err}") from err
    table = table.sort_values(TRUTH_KEYS)
    return {"/".join(clip): rows[list(PARAM_NAMES)].to_numpy(np.float64)
            for clip, rows in table.groupby(["identity", "video", "clip"], sort=False)}


def _check_truth(path: str, store: ClipStore, clips: list[ClipKey]) -> None:
    """Every clip of the split has one truth row per stored frame (a store made at another frame rate has not)."""
    truth = read_truth(path)
    absent = [str(key) for key in clips if str(key) not in truth]
    if absent:
        raise ValueError(f"the truth table {path} has no rows for {len(absent)} clips of the split, e.g. "
                         f"{', '.join(absent[:3])}: is it the truth of this store's world?")
    for key in clips:
        if len(truth[str(key)]) != len(store.clip(key)):
            raise ValueError(f"{key}: the truth table has {len(truth[str(key)])} frames, the store "
                             f"{len(store.clip(key))} (preprocessed at another frame rate than the world's?)")


# --- one pair ----------------------------------------------------------------------------------------------------------

@dataclass
class PairEvaluation:
    """One pair's frames table and Inception features (results, and the driving frames they are compared with)."""

    protocol: str
    pair: ReenactPair
    frames: pd.DataFrame | None = None
    result_features: np.ndarray | None = None
    real_features: np.ndarray | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "failed" if self.error else "ok"

    def row(self) -> dict:
        return {"protocol": self.protocol, "pair": self.pair.name, "source": source_name(self.pair),
                "driving": self.pair.driving, "status": self.status, "error": self.error}


def source_name(pair: ReenactPair) -> str:
    return pair.source or pair.driving  # self-reenactment: the driving clip's own first frame


def evaluated_frames(length: int, protocol: str, cap: int | None) -> np.ndarray:
    """The driving frames a pair is evaluated on: every frame (self: but the first, which is the source), or `cap`
    of them evenly spaced."""
    frames = np.arange(1 if protocol == "self" else 0, length)
    if cap is not None and len(frames) > cap:
        frames = frames[np.linspace(0, len(frames) - 1, cap).round().astype(int)]
    return frames


@dataclass(frozen=True)
class Measuring:
    """What measuring a pair uses, resolved once from the config where a task starts: the reenacting networks, the
    metric networks and AED's min-max table."""

    networks: ReenactNetworks
    metrics: MetricNetworks
    ranges: ParamRanges
    ranges_source: str  # where AED's table comes from

    @classmethod
    def of(cls, config: EvaluateConfig) -> Measuring:
        """Every network of `config` (one set per process: `networks_for`, `metric_networks`) and AED's table."""
        networks = networks_for(config.reenact)
        return cls(networks, metric_networks(config.metrics), *aed_ranges(config, networks))

    @property
    def backend(self) -> str:
        return self.networks.encode_config.face3d


def evaluate_pair(pair: ReenactPair, protocol: str, config: EvaluateConfig, measuring: Measuring,
                  sample: bool = False) -> PairEvaluation:
    """Reenact the chosen driving frames of one pair in memory and measure every frame. An input that cannot be
    reenacted (e.g. no readable face in the source) gives a failed evaluation; setup problems raise."""
    store = ClipStore.open(config.store, create=False)
    networks = measuring.networks
    try:
        source, driving = prepare_inputs(pair.driving, pair.source, pair.source_frame, pair.mode, config.reenact,
                                         networks, store)
    except (MissingWeightsError, UnknownWeightsError):
        raise
    except (ReenactInputError, FileNotFoundError, KeyError) as err:
        return PairEvaluation(protocol, pair, error=str(err))
    frames = evaluated_frames(len(driving), protocol, config.frames_per_clip)
    if not len(frames):
        return PairEvaluation(protocol, pair, error=f"{pair.driving} has a single frame, the source: none to evaluate")
    key = driving.clip.key
    real = driving.clip.crops.oindex[frames]
    results = generate(source, driving.params[frames], networks, config.reenact)
    static = generate(source, source.params[None], networks, config.reenact)  # Δp = 0: the baseline of doing nothing
    truth = read_truth(config.truth, key)[str(key)][frames] if config.truth is not None else None
    scores = frame_scores(results, static, real, driving.clip.landmarks.oindex[frames], source.crop, protocol, config,
                          measuring, truth, inversion(source, networks))
    scores["identity_retrieval"] = retrieval_scores(results, identity_gallery(store, config, source_name(pair),
                                                                              source.crop), measuring.metrics,
                                                    config.metrics.batch_size)
    ids = pd.DataFrame({"protocol": protocol, "pair": pair.name, "source": source_name(pair),
                        "source_frame": pair.source_frame, "driving": pair.driving, "frame": frames})
    if sample:
        write_png(Path(config.out) / SAMPLES_DIR / protocol / f"{pair.name}.png",
                  sample_grid(source.crop, real[:config.sample_frames], results[:config.sample_frames]))
    evaluation = PairEvaluation(protocol, pair, pd.concat([ids, scores], axis=1))
    if config.fid:
        inception, batch = measuring.metrics.inception, config.metrics.batch_size
        evaluation.result_features = inception_features(inception, results, batch)
        evaluation.real_features = inception_features(inception, real, batch)
    return evaluation


def identity_gallery(store: ClipStore, config: EvaluateConfig, source: str,
                     source_crop: np.ndarray) -> tuple[np.ndarray, int] | None:
    """One face per person of the split for identity retrieval, and the source's place among them: the source
    crop for its own person, the first frame of the first clip for every other; None when the source is not a
    clip of the store (a photo, a video file)."""
    if not source.startswith(CLIP_PREFIX):
        return None
    own = ClipKey.parse(source.removeprefix(CLIP_PREFIX)).identity
    firsts: dict[str, ClipKey] = {}
    for key in split_clips(store, config.identities):
        firsts.setdefault(key.identity, key)
    if own not in firsts:
        return None
    people = sorted(firsts)
    faces = [source_crop if person == own else store.clip(firsts[person]).frames(0, 1)[0] for person in people]
    return np.stack(faces), people.index(own)


def retrieval_scores(results: np.ndarray, gallery: tuple[np.ndarray, int] | None, metrics: MetricNetworks,
                     batch_size: int) -> np.ndarray:
    """`identity_retrieval` per result frame (NaN without a gallery)."""
    if gallery is None:
        return np.full(len(results), np.nan)
    table = identity_retrieval(metrics.identity, results, *gallery, batch_size).table
    return table["identity_retrieval"].to_numpy()


def generate(source: SourceFace, driving_params: np.ndarray, networks: ReenactNetworks,
             config: ReenactConfig) -> np.ndarray:
    """uint8 [N, S, S, 3]: the source with each row of driving parameters, in the reenactment's batches."""
    size = networks.batch_size(config)
    return np.concatenate([networks.generate(source, driving_params[start:start + size])
                           for start in range(0, len(driving_params), size)])


def inversion(source: SourceFace, networks: ReenactNetworks) -> np.ndarray:
    """uint8 [1, S, S, 3]: the source's own code rendered by G alone (truncated as reenactment renders it; no A, no
    Feature Transformer), at the crop's size: what the encoder's inversion keeps of the source."""
    reenactor = networks.reenactor
    with torch.no_grad():
        code = reenactor.truncate(torch.as_tensor(source.wplus[None], dtype=torch.float32, device=networks.device))
        image = (source.generator or reenactor.generator).synthesis(code).image
    return to_pixels(resize_to(image.float(), CROP_SIZE))


def pixel_error(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Mean |image - reference| per image [N] of uint8 [N or 1, S, S, 3] images, in 0-255 units."""
    return np.abs(images.astype(np.float32) - references.astype(np.float32)).mean(axis=(1, 2, 3))


def frame_scores(results: np.ndarray, static: np.ndarray, real: np.ndarray, real_landmarks: np.ndarray,
                 source_crop: np.ndarray, protocol: str, config: EvaluateConfig, measuring: Measuring,
                 truth: np.ndarray | None = None, inverted: np.ndarray | None = None) -> pd.DataFrame:
    """One row per generated frame: found flags and every metric of the module docstring (`static` [1, S, S, 3]:
    the source rendered with Δp = 0; `truth` [N, 15]: the driving frames' true parameters, when known; `inverted`
    [1, S, S, 3]: the source's inversion, `inversion`)."""
    networks, metrics, ranges, backend = measuring.networks, measuring.metrics, measuring.ranges, measuring.backend
    batch, count = config.metrics.batch_size, len(results)
    result_params, result_found = networks.estimate(results, None)  # the result's face is found, not given
    static_params, static_found = (np.repeat(part, count, axis=0) for part in networks.estimate(static, None))
    driving_params, driving_found = networks.estimate(real, real_landmarks)
    tables = [
        pd.DataFrame({"result_found": result_found, "static_found": static_found, "driving_found": driving_found}),
        csim(metrics.identity, results, np.repeat(source_crop[None], count, axis=0), batch).table,
        csim(metrics.identity, results, real, batch).table.add_suffix("_driving"),
        lpips(metrics.lpips, results, real, batch).table if protocol == "self" and config.lpips
        else pd.DataFrame({"lpips": np.full(count, np.nan)}),
        pd.DataFrame({"pixel": pixel_error(results, real), "static_pixel": pixel_error(static, real)}
                     if protocol == "self" else {"pixel": np.full(count, np.nan), "static_pixel": np.full(count, np.nan)}),
        pd.DataFrame({"inversion": np.repeat(pixel_error(inverted, source_crop[None]) if inverted is not None
                                             else np.nan, count)}),
        *face_errors(result_params, driving_params, result_found & driving_found, ranges, backend),
        *face_errors(static_params, driving_params, static_found & driving_found, ranges, backend, "static_"),
    ]
    if truth is not None:
        tables += face_errors(result_params, truth, result_found, ranges, backend, "truth_")
        tables += face_errors(static_params, truth, static_found, ranges, backend, "static_truth_")
        tables += face_errors(driving_params, truth, driving_found, ranges, backend, "driving_truth_")
    return pd.concat(tables, axis=1)


def face_errors(params: np.ndarray, references: np.ndarray, found: np.ndarray, ranges: ParamRanges,
                backend: str, prefix: str = "") -> list[pd.DataFrame]:
    """APD and AED of face parameters against references (NaN where `found` is False), columns prefixed."""
    return [pose_distance(params, references, backend, found).table.add_prefix(prefix),
            expression_distance(params, references, ranges, backend, found).table.add_prefix(prefix)]


def sample_grid(source: np.ndarray, driving: np.ndarray, results: np.ndarray) -> np.ndarray:
    """uint8 [K*H, 3*W, 3]: one row per frame, source | driving | result."""
    return np.concatenate([np.concatenate([source, frame, result], axis=1)
                           for frame, result in zip(driving, results)], axis=0)


# --- the whole protocol ------------------------------------------------------------------------------------------------

def distribution_row(protocol: str, evaluations: list[PairEvaluation], config: EvaluateConfig) -> DistributionScores:
    """FID and KID of a protocol's results against its driving frames (None with fewer than 2 of either, or
    without --fid)."""
    done = [evaluation for evaluation in evaluations if evaluation.status == "ok" and config.fid]
    fakes = np.concatenate([e.result_features for e in done]) if done else np.empty((0, 0))
    reals = np.concatenate([e.real_features for e in done]) if done else np.empty((0, 0))
    network = metric_networks(config.metrics).inception.name if config.fid else None
    row = DistributionScores(protocol=protocol, n_fake=len(fakes), n_real=len(reals), network=network)
    if min(len(fakes), len(reals)) < 2:
        return row
    metrics = config.metrics
    scores = distribution_scores(fakes, reals, network, metrics.kid_subsets, metrics.kid_subset_size, metrics.seed,
                                 fid_method="auto")
    return DistributionScores(**{**row.model_dump(), "fid": scores.fid, "kid_mean": scores.kid,
                                 "kid_std": scores.kid_std, "kid_subsets": scores.kid_subsets,
                                 "kid_subset_size": scores.kid_subset_size, "fid_method": scores.fid_method})


def distribution_table(rows: list[DistributionScores]) -> pd.DataFrame:
    """distribution.parquet: one row per protocol, NaN where not measured."""
    table = pd.DataFrame([row.model_dump() for row in rows], columns=DISTRIBUTION_COLUMNS)
    numbers = ["fid", "kid_mean", "kid_std", "kid_subsets", "kid_subset_size"]
    table[numbers] = table[numbers].astype(np.float64)
    return table


def frames_table(evaluations: list[PairEvaluation]) -> pd.DataFrame:
    tables = [evaluation.frames for evaluation in evaluations if evaluation.status == "ok"]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=FRAME_ID_COLUMNS)


def metric_columns(frames: pd.DataFrame, protocol: str | None = None) -> list[str]:
    """The metric columns of a frames table (those a protocol measures, when given)."""
    skipped = set(FRAME_ID_COLUMNS) | set(FOUND_COLUMNS) | (set(NOT_IN_CROSS) if protocol == "cross" else set())
    return [column for column in frames.columns if column not in skipped]


def clip_means(frames: pd.DataFrame) -> pd.DataFrame:
    """One row per pair of a frames table: the frames evaluated, the mean of every metric over the frames that
    measured it, and the share of frames whose faces the Net3D found."""
    grouped = frames.groupby(PAIR_COLUMNS, sort=False)
    means = grouped[[column for column in FOUND_COLUMNS if column in frames] + metric_columns(frames)].mean()
    return grouped.size().rename("frames").to_frame().join(means).reset_index()


def clips_table(evaluations: list[PairEvaluation], frames: pd.DataFrame) -> pd.DataFrame:
    """`clip_means` with every pair's status and error; a failed pair has 0 frames and no metrics."""
    status = pd.DataFrame([evaluation.row() for evaluation in evaluations],
                          columns=PAIR_COLUMNS + ["status", "error"])
    table = status.merge(clip_means(frames), on=PAIR_COLUMNS, how="left")
    table["frames"] = table["frames"].fillna(0).astype(int)
    return table


def metric_summary(frames: pd.DataFrame, networks: Networks) -> dict[str, dict[str, MetricStatistics]]:
    """Per protocol and metric: mean and std (n - 1) over the frames that measured it, n, n_missing (frames it
    could not be measured on: NaN) and the network that measured it."""
    return {protocol: {column: _statistics(group[column], networks, column)
                       for column in metric_columns(group, protocol)}
            for protocol, group in frames.groupby("protocol", sort=False)}


def _statistics(values: pd.Series, networks: Networks, column: str) -> MetricStatistics:
    measured = values.dropna()
    role = _network_of(column)
    return MetricStatistics(mean=measured.mean(), std=measured.std(), n=len(measured),
                            n_missing=int(values.isna().sum()), network=getattr(networks, role) if role else None)


def _network_of(column: str) -> str | None:
    """The network role of a metric column: its family (csim, lpips, apd, aed; pixel, inversion: None) is one of its
    words."""
    return next(NETWORK_OF_FAMILY[word] for word in column.split("_") if word in NETWORK_OF_FAMILY)


def linearity_tables(config: EvaluateConfig, clips: list[ClipKey],
                     networks: ReenactNetworks) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fits, sweep): each direction of A swept on the W+ of the first frame of a seeded few clips of the split,
    read by the Net3D, and fitted (`fit_linearity`; a direction whose faces were never found has a row of NaN)."""
    store = ClipStore.open(config.store, create=False)
    keys = seeded_subset(clips, config.linearity_sources, config.seed)
    wplus = networks.invert(np.stack([store.clip(key).frames(0, 1)[0] for key in keys]))
    reenactor = networks.reenactor
    sweep = sweep_directions(reenactor.generator, reenactor.directions, networks.encoders.face3d,
                             torch.as_tensor(wplus, device=networks.device), reenactor.ranges,
                             config.linearity_magnitudes, config.linearity_directions, reenactor.shift_scale,
                             batch_size=networks.batch_size(config.reenact))
    sweep.insert(3, "source_clip", [f"{CLIP_PREFIX}{keys[index]}" for index in sweep["source"]])
    fits = fit_linearity(sweep).set_index("direction").reindex(config.linearity_directions).reset_index()
    fits["points"] = fits["points"].fillna(0).astype(int)
    return fits, sweep


def linearity_summary(fits: pd.DataFrame, networks: Networks) -> LinearitySummary:
    fitted = fits[fits["points"] > 0]
    return LinearitySummary(directions=len(fits), fitted=len(fitted), slope_mean=fitted["slope"].mean(),
                            r2_mean=fitted["r2"].mean(), crosstalk_mean=fitted["crosstalk"].mean(),
                            networks=networks.model_dump(include={"generator", "directions", "net3d"}))


def protocol_summary(evaluations: list[PairEvaluation], frames: pd.DataFrame,
                     metrics: dict[str, MetricStatistics], distribution: DistributionScores) -> ProtocolSummary:
    """summary.json's block of one protocol: pairs, frames, the share of faces found, the statistics of every
    metric (`metric_summary`), FID and KID."""
    found = {column.removesuffix("_found"): frames[column].mean() for column in FOUND_COLUMNS if column in frames}
    return ProtocolSummary(pairs=len(evaluations), pairs_failed=sum(e.status == "failed" for e in evaluations),
                           frames=len(frames), faces_found=FacesFound(**found), metrics=metrics,
                           distribution=distribution)


def write_results(config: EvaluateConfig, plan: EvaluationPlan, evaluations: dict[str, list[PairEvaluation]],
                  distribution: list[DistributionScores], linearity: tuple[pd.DataFrame, pd.DataFrame] | None,
                  seconds: float) -> EvaluationSummary:
    """Write the tables and, last, summary.json (returned)."""
    out = Path(config.out)
    every = [evaluation for protocol in evaluations.values() for evaluation in protocol]
    frames = frames_table(every)
    write_table(frames, out / FRAMES_FILE)
    write_table(clips_table(every, frames), out / CLIPS_FILE)
    write_table(distribution_table(distribution), out / DISTRIBUTION_FILE)
    if linearity is not None:
        write_table(linearity[0], out / LINEARITY_FILE)
        write_table(linearity[1], out / SWEEP_FILE)
    metrics = metric_summary(frames, plan.networks)
    scores = {row.protocol: row for row in distribution}
    summary = EvaluationSummary(
        protocols={protocol: protocol_summary(done, frames[frames["protocol"] == protocol],
                                              metrics[protocol] if protocol in metrics else {}, scores[protocol])
                   for protocol, done in evaluations.items()},
        linearity=linearity_summary(linearity[0], plan.networks) if linearity is not None else None,
        networks=plan.networks, aed_ranges=plan.aed_ranges,
        weights=WeightsRecord(set=config.reenact.weights, sha256=plan.weights_sha256),
        environment=environment(networks_for(config.reenact).device), seconds=seconds)
    summary.write(out)
    return summary


# --- files -------------------------------------------------------------------------------------------------------------

def clear_previous(out: Path) -> None:
    """Remove a previous run's results from `out` (the files of this module's contract only), summary first."""
    for name in (SUMMARY_FILE, CONFIG_FILE, FRAMES_FILE, CLIPS_FILE, DISTRIBUTION_FILE, LINEARITY_FILE, SWEEP_FILE):
        (out / name).unlink(missing_ok=True)
    for protocol in PROTOCOLS:
        (out / PAIRS_DIR / f"{protocol}.parquet").unlink(missing_ok=True)
        shutil.rmtree(out / SAMPLES_DIR / protocol, ignore_errors=True)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as partial:
        table.to_parquet(partial, index=False)
    return path


def write_png(path: Path, image: np.ndarray) -> Path:
    with atomic_path(path) as partial:
        Image.fromarray(image).save(partial, format="PNG")  # the temporary name has no .png suffix
    return path


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def environment(device: torch.device) -> Environment:
    import prefect
    import zarr

    return Environment(
        python=platform.python_version(), torch=torch.__version__, numpy=np.__version__, prefect=prefect.__version__,
        zarr=zarr.__version__, device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(), code_version=code_version(), git_commit=git_commit(),
        time=datetime.now(UTC).isoformat(timespec="seconds"))


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """The checkout's commit, read from .git without running git (None outside a checkout)."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head  # detached
        ref = head[len("ref: "):]
        common = git / (git / "commondir").read_text().strip() if (git / "commondir").is_file() else git
        for place in (git, common):
            if (place / ref).is_file():
                return (place / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(f" {ref}"):
                return line.split()[0]
    except OSError:
        return None
    return None


# --- Prefect tasks -----------------------------------------------------------------------------------------------------

@task(name="plan-pairs", cache_policy=NO_CACHE)
def plan_task(config: EvaluateConfig) -> EvaluationPlan:
    return plan_evaluation(config)


@task(name="evaluate-pair", cache_policy=NO_CACHE, task_run_name="evaluate {pair.name}")
def evaluate_pair_task(pair: ReenactPair, protocol: str, config: EvaluateConfig, sample: bool) -> PairEvaluation:
    """Takes the config (paths inside) so it can run in another process (Dask); the networks are resolved here."""
    return evaluate_pair(pair, protocol, config, Measuring.of(config), sample)


@task(name="distribution-scores", cache_policy=NO_CACHE, task_run_name="fid-kid {protocol}")
def distribution_task(protocol: str, evaluations: list[PairEvaluation], config: EvaluateConfig) -> DistributionScores:
    return distribution_row(protocol, evaluations, config)


@task(name="linearity", cache_policy=NO_CACHE)
def linearity_task(config: EvaluateConfig, clips: list[ClipKey]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return linearity_tables(config, clips, networks_for(config.reenact))


@task(name="write-results", cache_policy=NO_CACHE)
def write_results_task(config: EvaluateConfig, plan: EvaluationPlan, evaluations: dict[str, list[PairEvaluation]],
                       distribution: list[DistributionScores], linearity: tuple[pd.DataFrame, pd.DataFrame] | None,
                       seconds: float) -> EvaluationSummary:
    return write_results(config, plan, evaluations, distribution, linearity, seconds)
