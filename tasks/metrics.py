"""The evaluation metrics over batches: CSIM, LPIPS, FID and KID, APD, AED, and the linearity of the directions.

    networks = metric_networks(MetricsConfig())                         # identity, LPIPS, Inception, loaded once
    csim(networks.identity, results, sources)                           # PairScores, one row per pair
    lpips(networks.lpips, results, targets)
    features = inception_features(networks.inception, results)          # [N, 2048], for FID and KID
    distribution_scores(features, target_features, networks.inception.name)   # fid_method="auto": small sets fast
    pose_distance(result_params, driving_params, backend="deca")       # APD, degrees
    expression_distance(result_params, driving_params, ranges, backend="deca")   # AED
    fits = fit_linearity(sweep_directions(G, A, face3d, wplus, ranges))  # per direction: slope, R², cross-talk

Plain functions are what evaluation, training validation, tests and benchmarks call; the Prefect tasks at the end
are thin wrappers that load the networks once per process from a `MetricsConfig`. Images are uint8 RGB
[N, H, W, 3] (the store's crops, decoded results); face parameters are [N, >= 15] in `PARAM_NAMES` order (what
`Face3DEstimate.to_array()` gives). Every result carries the name of the network that measured it: CSIM of dlib
and of ArcFace, or APD of DECA and of the landmark fit, are different numbers. Against the synthetic world's
truth, `pose_distance(estimates, truth, backend)` is the estimator's own pose error.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from models import MissingWeightsError
from models.directions import (NUM_ANGLES, NUM_PARAMS, PARAM_NAMES, SHIFT_SCALE, DirectionMatrix, FaceParams,
                               ParamRanges, shift_wplus)
from models.face3d import Face3DBackend
from models.identity import IdentityEmbedder, cosine_similarity
from models.images import FRAME_SIZE, resize_to, to_pixels, to_signed
from models.metrics.fid import FeatureStatistics, frechet_distance, kernel_inception_distance
from models.metrics.inception import FIDInception
from models.metrics.lpips import LPIPS
from models.stylegan2 import Generator
from storage import networks
from storage.weights import WeightsRegistry

ANGLE_NAMES = PARAM_NAMES[:NUM_ANGLES]
EXPRESSION_PARAMS = PARAM_NAMES[NUM_ANGLES:]  # jaw and exp_00..exp_10, the 12 values of AED
DEFAULT_MAGNITUDES = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)  # shift units; ±SHIFT_SCALE spans a usual range
FIT_COLUMNS = ["direction", "slope", "intercept", "r2", "points", "crosstalk", "crosstalk_max", "crosstalk_max_param",
               *[f"crosstalk_{param}" for param in PARAM_NAMES]]  # `fit_linearity`'s table, even when empty


@dataclass(frozen=True)
class PairScores:
    """One metric per image pair (a row of `table` per pair, NaN where a pair could not be measured) and the
    network that measured it."""

    metric: str
    network: str
    table: pd.DataFrame

    def summary(self) -> dict[str, float | int | str]:
        """Means over the measured pairs, with the metric, the network and how many pairs were measured."""
        measured = int(self.table.notna().all(axis=1).sum())
        return {"metric": self.metric, "network": self.network, "pairs": measured,
                **{column: float(self.table[column].mean()) for column in self.table.columns}}


def _check_pairs(a, b, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} and {len(b)} items do not pair up")


def _batches(count: int, batch_size: int) -> Sequence[slice]:
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def _device_of(network: torch.nn.Module) -> torch.device:
    return next(network.parameters()).device


# --- identity, perceptual distance --------------------------------------------------------------------------------------

def csim(embedder: IdentityEmbedder, images: np.ndarray, references: np.ndarray, batch_size: int = 32) -> PairScores:
    """CSIM: the cosine of the identity embeddings of each image and its reference (1 for the same image)."""
    _check_pairs(images, references, "csim")
    values = [cosine_similarity(embedder.embed(images[rows]), embedder.embed(references[rows])).numpy()
              for rows in _batches(len(images), batch_size)]
    return PairScores("csim", embedder.name, pd.DataFrame({"csim": np.concatenate(values) if values else []}))


def identity_retrieval(embedder: IdentityEmbedder, images: np.ndarray, gallery: np.ndarray, own: int,
                       batch_size: int = 32) -> PairScores:
    """Identity retrieval: 1 for each image whose identity embedding lies nearest (cosine) to gallery entry `own`
    among all of `gallery` [G, S, S, 3] (one face per person: the source's own at `own`), else 0; the mean is the
    share of images a face recogniser would give to the right person."""
    if not 0 <= own < len(gallery):
        raise ValueError(f"identity retrieval: own={own} is not an entry of a gallery of {len(gallery)}")
    people = embedder.embed(gallery)
    values = [(embedder.embed(images[rows]) @ people.T).argmax(dim=1).eq(own).float().numpy()
              for rows in _batches(len(images), batch_size)]
    return PairScores("identity_retrieval", embedder.name,
                      pd.DataFrame({"identity_retrieval": np.concatenate(values) if values else []}))


@torch.no_grad()
def lpips(network: LPIPS, images: np.ndarray, references: np.ndarray, batch_size: int = 16) -> PairScores:
    """LPIPS of each image and its reference (0 for the same image)."""
    _check_pairs(images, references, "lpips")
    device = _device_of(network)
    values = [network(to_signed(images[rows], device), to_signed(references[rows], device)).float().cpu().numpy()
              for rows in _batches(len(images), batch_size)]
    return PairScores("lpips", network.name, pd.DataFrame({"lpips": np.concatenate(values) if values else []}))


# --- FID and KID ------------------------------------------------------------------------------------------------------

@torch.no_grad()
def inception_features(network: FIDInception, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """float32 [N, 2048] pool3 features of uint8 images (scaled to [0, 1] as pytorch-fid's ToTensor does)."""
    device = _device_of(network)
    out = [network(torch.as_tensor(images[rows], device=device).permute(0, 3, 1, 2).float() / 255).float().cpu()
           for rows in _batches(len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.empty((0, network.fc.in_features), np.float32)


@dataclass(frozen=True)
class DistributionScores:
    """FID and KID of one image set against another, with the feature network's name, the KID sampling and the
    route FID took (`fid_of_features`)."""

    network: str
    fid: float
    kid: float
    kid_std: float
    kid_subsets: int
    kid_subset_size: int
    images: int
    references: int
    fid_method: str = "pytorch-fid"

    def summary(self) -> dict[str, float | int | str]:
        return asdict(self)


FidMethod = Literal["pytorch-fid", "auto"]


def fid_of_features(features: np.ndarray, references: np.ndarray,
                    method: FidMethod = "pytorch-fid") -> tuple[float, str]:
    """FID of two feature sets [N, D], [M, D], and the route it took.

    'pytorch-fid': its `sqrtm` of the D x D covariance product (the parity route). 'auto': that route when both sets
    hold more than D features; for a smaller set the same distance exactly through its span ('span'):
    tr (S1 S2)^1/2 is the sum of the square roots of the eigenvalues of A S2 A^T, with A the smaller set's centred
    features / sqrt(n - 1), an n x n problem instead of D x D. (A 2048-d `sqrtm` takes a minute on 2 cores, and on
    fewer than D features pytorch-fid's covariances are singular, so it adds a ridge that moves the value a little.)
    """
    first = FeatureStatistics(features.shape[1]).update(features)
    second = FeatureStatistics(references.shape[1]).update(references)
    if method == "pytorch-fid" or min(first.count, second.count) > first.dim:
        return frechet_distance(first.mean, first.covariance, second.mean, second.covariance), "pytorch-fid"
    (rows, small), (_, large) = sorted([(features, first), (references, second)], key=lambda item: item[1].count)
    spanned = (np.asarray(rows, np.float64) - small.mean) / np.sqrt(small.count - 1)
    eigenvalues = np.linalg.eigvalsh(spanned @ large.covariance @ spanned.T)
    diff = first.mean - second.mean
    trace_root = np.sqrt(np.clip(eigenvalues, 0, None)).sum()  # round-off can leave tiny negative eigenvalues
    return float(diff @ diff + np.trace(first.covariance) + np.trace(second.covariance) - 2 * trace_root), "span"


def distribution_scores(features: np.ndarray, references: np.ndarray, network: str, kid_subsets: int = 100,
                        kid_subset_size: int = 1000, seed: int = 2020,
                        fid_method: FidMethod = "pytorch-fid") -> DistributionScores:
    """FID and KID of two feature sets [N, D], [M, D] (e.g. results against the real frames); `fid_method` as
    `fid_of_features`."""
    fid, route = fid_of_features(features, references, fid_method)
    kid = kernel_inception_distance(features, references, kid_subsets, kid_subset_size, seed)
    return DistributionScores(network, fid, kid.mean, kid.std, kid.subsets, kid.subset_size, len(features),
                              len(references), route)


# --- pose and expression --------------------------------------------------------------------------------------------

def _parameter_pairs(params: np.ndarray, references: np.ndarray, found: np.ndarray | None,
                     what: str) -> tuple[np.ndarray, np.ndarray]:
    """The first 15 columns of both as float64, rows where `found` is False set to NaN."""
    _check_pairs(params, references, what)
    first = np.array(np.asarray(params, np.float64)[:, :NUM_PARAMS])
    second = np.array(np.asarray(references, np.float64)[:, :NUM_PARAMS])
    if first.shape[1:] != (NUM_PARAMS,) or second.shape[1:] != (NUM_PARAMS,):
        raise ValueError(f"{what}: face parameters are [N, >= {NUM_PARAMS}] in PARAM_NAMES order")
    if found is not None:
        lost = ~np.asarray(found, bool)
        first[lost] = np.nan
    return first, second


def pose_distance(params: np.ndarray, references: np.ndarray, backend: str,
                  found: np.ndarray | None = None) -> PairScores:
    """APD: |Δyaw|, |Δpitch|, |Δroll| in degrees per pair, and `apd`, their mean. `found` [N]: pairs whose faces
    the Net3D read in both images (others are NaN)."""
    first, second = _parameter_pairs(params, references, found, "apd")
    errors = np.abs(first[:, :NUM_ANGLES] - second[:, :NUM_ANGLES])
    table = pd.DataFrame(errors, columns=[f"apd_{name}" for name in ANGLE_NAMES])
    table["apd"] = errors.mean(axis=1)
    return PairScores("apd", backend, table)


def normalised_expressions(params: np.ndarray, ranges: ParamRanges) -> np.ndarray:
    """Jaw and exp_00..exp_10 of [N, 15] mapped by the table's [min, max] onto [0, 1] (not clipped: the map is
    affine, so a difference is |Δ| / (max - min) wherever the values lie)."""
    low, high = ranges.table[NUM_ANGLES:NUM_PARAMS].T
    return (params[:, NUM_ANGLES:NUM_PARAMS] - low) / (high - low)


def expression_distance(params: np.ndarray, references: np.ndarray, ranges: ParamRanges, backend: str,
                        found: np.ndarray | None = None) -> PairScores:
    """AED: mean |Δ| of the 12 min-max-normalised jaw and expression values per pair (`aed`), and each of them.
    `ranges` is the table of the Net3D that read the parameters (e.g. `ranges-<backend>.npy` of the store)."""
    first, second = _parameter_pairs(params, references, found, "aed")
    errors = np.abs(normalised_expressions(first, ranges) - normalised_expressions(second, ranges))
    table = pd.DataFrame({"aed": errors.mean(axis=1)})
    for column, name in enumerate(EXPRESSION_PARAMS):
        table[f"aed_{name}"] = errors[:, column]
    return PairScores("aed", backend, table)


# --- linearity of the directions ----------------------------------------------------------------------------------------

def _shift_units(params: np.ndarray, ranges: ParamRanges, shift_scale: float) -> np.ndarray:
    return ranges.to_shift_space(FaceParams.from_vector(torch.as_tensor(params, dtype=torch.float64)),
                                 shift_scale).numpy()


@torch.no_grad()
def _generate_and_estimate(generator: Generator, face3d: Face3DBackend, wplus: torch.Tensor,
                           landmarks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Face parameters [B, 15] and found [B] of G's images of W+ [B, L, D]."""
    images = to_pixels(resize_to(generator.synthesis(wplus).image, FRAME_SIZE))  # Net3Ds read the 256 crop
    points = None if landmarks is None else np.repeat(np.asarray(landmarks, np.float32)[None], len(images), axis=0)
    estimate = face3d.estimate(images, points)
    return estimate.to_array()[:, :NUM_PARAMS].astype(np.float64), estimate.found.cpu().numpy()


@torch.no_grad()
def sweep_directions(generator: Generator, directions: DirectionMatrix, face3d: Face3DBackend, wplus: torch.Tensor,
                     ranges: ParamRanges, magnitudes: Sequence[float] = DEFAULT_MAGNITUDES,
                     which: Sequence[str] = PARAM_NAMES, shift_scale: float = SHIFT_SCALE, batch_size: int = 8,
                     landmarks: np.ndarray | None = None) -> pd.DataFrame:
    """Ask each direction for each magnitude and read what the face did.

    For direction d and magnitude m (shift units), each source W+ [B, L, D] is shifted by A(m e_d)
    (`shift_wplus`), G draws it and the Net3D reads it. The response is the change of all 15 parameters, in shift
    units, from the Net3D's reading of the unshifted source G(W+), so a response at m = 0 is what A's bias alone
    does. `landmarks` [68, 2]: one fixed set for every image (aligned crops), instead of the backend detecting them.

    One row per (direction, magnitude, source): `direction`, `magnitude`, `source`, `found` (the Net3D read both
    images), and `d_<param>` for the 15 parameters.
    """
    unknown = sorted(set(which) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown directions {unknown}; choose from {', '.join(PARAM_NAMES)}")
    sources = len(wplus)
    reference, reference_found = [], []
    for rows in _batches(sources, batch_size):
        params, found = _generate_and_estimate(generator, face3d, wplus[rows], landmarks)
        reference.append(params)
        reference_found.append(found)
    base = _shift_units(np.concatenate(reference), ranges, shift_scale)
    base_found = np.concatenate(reference_found)

    requests = [(name, float(m), source) for name in which for m in magnitudes for source in range(sources)]
    rows_out = []
    for chunk in _batches(len(requests), batch_size):
        batch = requests[chunk]
        delta = torch.zeros(len(batch), NUM_PARAMS, device=wplus.device, dtype=wplus.dtype)
        for row, (name, magnitude, _) in enumerate(batch):
            delta[row, PARAM_NAMES.index(name)] = magnitude
        index = torch.tensor([source for _, _, source in batch], device=wplus.device)
        shifted = shift_wplus(wplus[index], directions(delta))
        params, found = _generate_and_estimate(generator, face3d, shifted, landmarks)
        response = _shift_units(params, ranges, shift_scale) - base[index.cpu().numpy()]
        for row, (name, magnitude, source) in enumerate(batch):
            rows_out.append({"direction": name, "magnitude": magnitude, "source": source,
                             "found": bool(found[row] and base_found[source]),
                             **{f"d_{param}": float(value) for param, value in zip(PARAM_NAMES, response[row])}})
    return pd.DataFrame(rows_out)


def fit_linearity(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per direction of a `sweep_directions` table (found rows only): the least-squares line of its own
    parameter's response over the requested magnitude (`slope`, `intercept`, `r2`; ideal 1, 0, 1) and the
    cross-talk into every other parameter, mean |response| / |magnitude| over the non-zero magnitudes
    (`crosstalk_<param>`; ideal 0, in the same units as the slope), with its mean and its worst parameter."""
    rows = []
    for name, group in sweep[sweep["found"]].groupby("direction", sort=False):
        magnitude = group["magnitude"].to_numpy(np.float64)
        response = group[f"d_{name}"].to_numpy(np.float64)
        slope, intercept = np.polyfit(magnitude, response, 1)
        residual = response - (slope * magnitude + intercept)
        spread = ((response - response.mean()) ** 2).sum()
        moved = magnitude != 0
        others = [param for param in PARAM_NAMES if param != name]
        crosstalk = {param: float((group[f"d_{param}"].abs().to_numpy()[moved] / np.abs(magnitude[moved])).mean())
                     for param in others}
        worst = max(crosstalk, key=crosstalk.get)
        rows.append({"direction": name, "slope": float(slope), "intercept": float(intercept),
                     "r2": float(1 - (residual ** 2).sum() / spread) if spread > 0 else float("nan"),
                     "points": len(group), "crosstalk": float(np.mean(list(crosstalk.values()))),
                     "crosstalk_max": crosstalk[worst], "crosstalk_max_param": worst,
                     **{f"crosstalk_{param}": crosstalk.get(param, np.nan) for param in PARAM_NAMES}})
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


def linearity_analysis(generator: Generator, directions: DirectionMatrix, face3d: Face3DBackend, wplus: torch.Tensor,
                       ranges: ParamRanges, **options) -> pd.DataFrame:
    """`fit_linearity(sweep_directions(...))`: one row per direction (options as `sweep_directions`)."""
    return fit_linearity(sweep_directions(generator, directions, face3d, wplus, ranges, **options))


# --- networks and Prefect tasks -----------------------------------------------------------------------------------------

class MetricsConfig(BaseModel):
    """Which networks measure (the batch size and device only decide how fast)."""

    identity: Literal["auto", "arcface", "dlib"] = Field(
        "auto", description="CSIM embedder: 'arcface' (the paper's, user weights), 'dlib' (offline, ships in a "
                            "wheel), 'auto' (arcface when its weights are there, else dlib).",
        json_schema_extra={"option": "embedder"})
    weights_dir: str | None = Field(None, description="Weights directory (default: $REENACT_WEIGHTS_DIR, else weights/).")
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    batch_size: int = Field(16, ge=1, description="Images per forward pass of the measuring networks.", json_schema_extra={"option": "metrics-batch-size"})
    kid_subsets: int = Field(100, ge=1, description="KID: random subset pairs averaged.")
    kid_subset_size: int = Field(1000, ge=2, description="KID: features per subset (fewer when a set is smaller).")
    seed: int = Field(2020, description="KID: seed of the subset sampling (torch-fidelity's default).", json_schema_extra={"option": "kid-seed"})

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class MetricNetworks:
    """The metric networks of one config, each loaded when first used (a missing file fails only the metric that
    needs it, with `MissingWeightsError`)."""

    def __init__(self, config: MetricsConfig):
        self.config = config
        self.device = config.resolved_device()
        self.registry = WeightsRegistry(config.weights_dir)
        self._lock = threading.Lock()
        self._built: dict[str, object] = {}

    def _get(self, name: str, build):
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]

    @property
    def identity(self) -> IdentityEmbedder:
        return self._get("identity", self._build_identity)

    @property
    def lpips(self) -> LPIPS:
        return self._get("lpips", lambda: networks.lpips(self.registry, self.device))

    @property
    def inception(self) -> FIDInception:
        return self._get("inception", lambda: networks.fid_inception(self.registry, self.device))

    def _present(self, name: str) -> bool:
        try:
            self.registry.path(name)
        except MissingWeightsError:
            return False
        return True

    def _build_identity(self) -> IdentityEmbedder:
        choice = self.config.identity
        if choice == "auto":
            choice = "arcface" if self._present(networks.ARCFACE) else "dlib"
        if choice == "arcface":
            return networks.identity_embedder(self.registry, "arcface", self.device, batch_size=self.config.batch_size)
        return networks.identity_embedder(self.registry, "dlib")


_cache_lock = threading.Lock()
_cache: dict[str, MetricNetworks] = {}


def metric_networks(config: MetricsConfig) -> MetricNetworks:
    """One `MetricNetworks` per process and config (threads share them: inference only)."""
    key = config.model_dump_json(include={"identity", "weights_dir", "device"})
    with _cache_lock:
        if key not in _cache:
            _cache[key] = MetricNetworks(config)
        return _cache[key]


@task(name="csim", cache_policy=NO_CACHE)
def csim_task(images: np.ndarray, references: np.ndarray, config: MetricsConfig) -> PairScores:
    return csim(metric_networks(config).identity, images, references, config.batch_size)


@task(name="lpips", cache_policy=NO_CACHE)
def lpips_task(images: np.ndarray, references: np.ndarray, config: MetricsConfig) -> PairScores:
    return lpips(metric_networks(config).lpips, images, references, config.batch_size)


@task(name="inception-features", cache_policy=NO_CACHE)
def inception_features_task(images: np.ndarray, config: MetricsConfig) -> np.ndarray:
    return inception_features(metric_networks(config).inception, images, config.batch_size)


@task(name="fid-kid", cache_policy=NO_CACHE)
def distribution_scores_task(features: np.ndarray, references: np.ndarray, config: MetricsConfig) -> DistributionScores:
    return distribution_scores(features, references, metric_networks(config).inception.name, config.kid_subsets,
                               config.kid_subset_size, config.seed)


@task(name="pose-distance", cache_policy=NO_CACHE)
def pose_distance_task(params: np.ndarray, references: np.ndarray, backend: str,
                       found: np.ndarray | None = None) -> PairScores:
    return pose_distance(params, references, backend, found)


@task(name="expression-distance", cache_policy=NO_CACHE)
def expression_distance_task(params: np.ndarray, references: np.ndarray, ranges: ParamRanges, backend: str,
                             found: np.ndarray | None = None) -> PairScores:
    return expression_distance(params, references, ranges, backend, found)


@task(name="linearity", cache_policy=NO_CACHE)
def linearity_task(generator: Generator, directions: DirectionMatrix, face3d: Face3DBackend, wplus: torch.Tensor,
                   ranges: ParamRanges, **options) -> pd.DataFrame:
    """Takes the loaded modules (local runner: they are not sent anywhere)."""
    return linearity_analysis(generator, directions, face3d, wplus, ranges, **options)
