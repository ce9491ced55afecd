"""What an evaluation folder says in JSON, as typed models written and read by the same classes:

    summary.json   `EvaluationSummary`: per protocol the pairs, frames, faces found, every metric's statistics and
                   FID/KID; the linearity of A; the networks, weights, environment (written last: a complete run)
    sets.json      `EvaluationSets`: the labels of a folder of several sets' evaluations, in order

    summary = EvaluationSummary.read("outputs/evaluation")
    summary.protocols["self"].metrics["csim"].mean       # None where no frame measured it (never NaN)

A figure that was not measured is None, in memory and in the file (JSON has no NaN).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel

from storage.files import atomic_path

SUMMARY_FILE = "summary.json"
SETS_FILE = "sets.json"  # a folder of several sets' evaluations


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


Measured = Annotated[float | None, AfterValidator(_finite)]  # a figure; None (not NaN) where not measured


class JsonFile(BaseModel):
    """A model that is one JSON file of an evaluation folder (`FILE`), written whole or not at all."""

    FILE: ClassVar[str]  # the file's name in the folder

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / self.FILE
        with atomic_path(path) as partial:
            partial.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: str | Path):
        return cls.model_validate_json((Path(folder) / cls.FILE).read_text(encoding="utf-8"))


class Networks(BaseModel):
    """The network behind every figure, by role (None: that figure is not measured)."""

    identity: str
    lpips: str | None = None  # self-reenactment with --lpips only
    inception: str | None = None  # FID/KID (--fid) only
    net3d: str
    generator: str
    encoder: str
    directions: str
    feature_transformer: str | None = None  # None: G alone


class MetricStatistics(BaseModel):
    """One metric of one protocol over the frames that measured it (std with n - 1); `n_missing` frames could not
    be measured (no face found, or the metric switched off)."""

    mean: Measured
    std: Measured
    n: int
    n_missing: int
    network: str | None  # None: a pixel difference, no network


class DistributionScores(BaseModel):
    """FID and KID of one protocol's results against its driving frames (a row of distribution.parquet)."""

    protocol: str
    fid: Measured = None
    kid_mean: Measured = None
    kid_std: Measured = None
    kid_subsets: int | None = None
    kid_subset_size: int | None = None
    n_real: int = 0
    n_fake: int = 0
    network: str | None = None  # None: not measured (--no-fid)
    fid_method: str | None = None


class FacesFound(BaseModel):
    """The share of frames whose face the Net3D read: the result, the Δp = 0 render, the driving frame (None: no
    frame evaluated)."""

    result: Measured = None
    static: Measured = None
    driving: Measured = None


class ProtocolSummary(BaseModel):
    pairs: int
    pairs_failed: int
    frames: int
    faces_found: FacesFound
    metrics: dict[str, MetricStatistics]  # by frames.parquet column: csim, lpips, apd, static_apd, truth_aed, ...
    distribution: DistributionScores


class LinearitySummary(BaseModel):
    directions: int
    fitted: int  # directions with at least one face read
    slope_mean: Measured
    r2_mean: Measured
    crosstalk_mean: Measured
    networks: dict[str, str | None]  # generator, directions, net3d


class WeightsRecord(BaseModel):
    set: str
    sha256: dict[str, str]  # by registry file name


class Environment(BaseModel):
    """What produced the figures: versions, device, code, time."""

    python: str
    torch: str
    numpy: str
    prefect: str
    zarr: str
    device: str
    device_name: str
    code_version: str
    git_commit: str | None
    time: str  # ISO 8601, UTC


class EvaluationSummary(JsonFile):
    FILE: ClassVar[str] = SUMMARY_FILE

    protocols: dict[str, ProtocolSummary]  # in the order they were measured
    linearity: LinearitySummary | None  # None: not measured (--no-linearity)
    networks: Networks
    aed_ranges: str  # where AED's min-max table came from
    weights: WeightsRecord
    environment: Environment
    seconds: float


class SetEntry(BaseModel):
    label: str  # its folder: <out>/<label>
    weights: str
    weights_dir: str | None = None
    feature_transformer: str | None = None


class EvaluationSets(JsonFile):
    FILE: ClassVar[str] = SETS_FILE

    sets: list[SetEntry]  # --weights first, then each --compare

    @classmethod
    def find(cls, folder: str | Path) -> EvaluationSets | None:
        """The sets of a folder of several sets' evaluations, or None when the folder is one set's."""
        return cls.read(folder) if (Path(folder) / cls.FILE).is_file() else None
