"""FID and KID from feature vectors: the arithmetic of pytorch-fid, clean-fid and torch-fidelity, in numpy.

FID (Heusel et al. 2017) is the Fréchet distance of two Gaussians fitted to the features,
    |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)),
with pytorch-fid's numerics: scipy's `sqrtm` of the product, a small ridge on both covariances when that is not
finite (singular covariances, e.g. fewer images than dimensions), the imaginary part of round-off dropped. The
statistics stream (`FeatureStatistics`), so evaluation feeds batches and never holds every feature.

KID (Binkowski et al. 2018) is the unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3, averaged over
random subsets: torch-fidelity's sampling (one `RandomState(seed)`, a subset of each set per round, default seed
2020), clean-fid's subset size (the smaller set when it has fewer than `subset_size` features).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

FULL_GRAM_LIMIT = 4096  # sets up to this size get their Gram matrices once, subsets index them (KID)


def _float64_rows(features) -> np.ndarray:
    """[N, D] float64 from a numpy array or a torch tensor (any device)."""
    if hasattr(features, "detach"):
        features = features.detach().cpu().double().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features are [N, D], got shape {list(features.shape)}")
    return features


@dataclass
class FeatureStatistics:
    """Count, mean and scatter (sum of outer products of deviations) of feature vectors, in float64.

    Batches merge by Chan et al.'s pairwise update, so the result is the mean and covariance of all features at
    once (`np.cov`'s unbiased estimate, as pytorch-fid takes it) without keeping them; two accumulators merge the
    same way (one per worker).
    """

    dim: int
    count: int = 0
    mean: np.ndarray = field(init=False)
    scatter: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.dim)
        self.scatter = np.zeros((self.dim, self.dim))

    def update(self, features) -> FeatureStatistics:
        """Add a batch [N, dim]; returns self."""
        batch = _float64_rows(features)
        if batch.shape[1] != self.dim:
            raise ValueError(f"features have {batch.shape[1]} values, these statistics {self.dim}")
        if len(batch):
            centred = batch - batch.mean(0)
            self._combine(len(batch), batch.mean(0), centred.T @ centred)
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Add another accumulator's features; returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {other.dim} values into {self.dim}")
        if other.count:
            self._combine(other.count, other.mean, other.scatter)
        return self

    def _combine(self, count: int, mean: np.ndarray, scatter: np.ndarray) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.scatter = self.scatter + scatter + np.outer(delta, delta) * (self.count * count / total)
        self.mean = self.mean + delta * (count / total)
        self.count = total

    @property
    def covariance(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, have {self.count}")
        return self.scatter / (self.count - 1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """The Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's `calculate_frechet_distance`)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"means {mu1.shape}, {mu2.shape} and covariances {sigma1.shape}, {sigma2.shape} disagree")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonal of both", stacklevel=2)
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the square root has an imaginary part of {np.abs(covmean.imag).max():.3g}, "
                             "more than round-off")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_statistics(a: FeatureStatistics, b: FeatureStatistics) -> float:
    return frechet_distance(a.mean, a.covariance, b.mean, b.covariance)


@dataclass(frozen=True)
class KernelDistance:
    """KID over `subsets` random pairs of subsets of `subset_size` features each: mean and (population) std."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """The unbiased MMD^2 of two equal-size samples from their kernel matrices (diagonals of kxx, kyy left out)."""
    m = len(kxx)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kernel_inception_distance(features_a, features_b, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 2020) -> KernelDistance:
    """KID of two feature sets [N, D], [M, D] with the cubic polynomial kernel (torch-fidelity's defaults)."""
    a, b = _float64_rows(features_a), _float64_rows(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets of {a.shape[1]} and {b.shape[1]} values")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features in each set, got {len(a)} and {len(b)}")
    dim = a.shape[1]
    gram = _GramSource(a, b)
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        rows_a = rng.choice(len(a), size, replace=False)
        rows_b = rng.choice(len(b), size, replace=False)
        kernel = [(g / dim + 1) ** 3 for g in gram.blocks(rows_a, rows_b)]
        values[i] = polynomial_mmd2(*kernel)
    return KernelDistance(float(values.mean()), float(values.std()), subsets, size)


class _GramSource:
    """Dot products a.a, b.b, a.b of chosen rows: indexed from Gram matrices computed once for sets up to
    `FULL_GRAM_LIMIT` (each subset costs no matrix product then), multiplied per subset for larger ones."""

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self.a, self.b = a, b
        self.full = (a @ a.T, b @ b.T, a @ b.T) if max(len(a), len(b)) <= FULL_GRAM_LIMIT else None

    def blocks(self, rows_a: np.ndarray, rows_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.full is not None:
            aa, bb, ab = self.full
            return aa[np.ix_(rows_a, rows_a)], bb[np.ix_(rows_b, rows_b)], ab[np.ix_(rows_a, rows_b)]
        x, y = self.a[rows_a], self.b[rows_b]
        return x @ x.T, y @ y.T, x @ y.T
