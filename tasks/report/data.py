"""The evaluation folder, read once into typed objects, and what its metric columns mean.

    evaluation = load_evaluation("outputs/evaluation")   # NotAnEvaluationError names the files it lacks
    evaluation.summary.protocols["self"].metrics["csim"]  # `tasks.evaluation_summary.MetricStatistics`
    evaluation.not_measured("self", "lpips")             # "--no-lpips": why a figure is empty (None: it is not)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from tasks.evaluate import (CLIPS_FILE, CONFIG_FILE, DISTRIBUTION_FILE, FOUND_COLUMNS, FRAME_ID_COLUMNS, FRAMES_FILE,
                            LINEARITY_FILE, SAMPLES_DIR, SWEEP_FILE, RunRecord)
from tasks.evaluation_summary import SUMMARY_FILE, EvaluationSets, EvaluationSummary

REQUIRED_FILES = (CONFIG_FILE, SUMMARY_FILE, FRAMES_FILE, CLIPS_FILE, DISTRIBUTION_FILE)
THROUGHPUT_JSON, THROUGHPUT_PARQUET = "throughput.json", "throughput.parquet"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class NotAnEvaluationError(FileNotFoundError):
    """The folder is not one the evaluate flow wrote: the message names what is missing."""


class ReportConfig(BaseModel):
    """How the report is computed and what it shows."""

    resamples: int = Field(2000, ge=100, description="Bootstrap resamples behind each confidence interval.")
    level: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    seed: int = Field(0, description="Seed of the bootstrap, so that a report is reproducible.")
    samples_per_protocol: int = Field(8, ge=0, description="Sample grids shown per protocol (the first, by name).")
    published: str | None = Field(None, description="YAML of published numbers (default: tasks/data/published_results.yaml).")
    screenshot: bool = Field(False, description="Also write report.png, the page as headless Chromium shows it.")


# --- what a metric column means -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    column: str
    label: str
    better: str  # "higher", "lower" or a sentence
    headline: bool  # a row of the main table; per-parameter and baseline columns go to the detailed one


BASE_METRICS = {"csim": ("CSIM", "higher"), "csim_driving": ("CSIM to driving", "self higher; cross lower (leak)"),
                "lpips": ("LPIPS", "lower"), "apd": ("APD", "lower"), "aed": ("AED", "lower"),
                "pixel": ("pixel error", "lower"), "inversion": ("inversion error", "lower"),
                "identity_retrieval": ("identity retrieval", "higher")}
PREFIXES = {"static_truth_": " vs truth, doing nothing (Δp = 0)",  # longest first: the first that fits is taken
            "driving_truth_": ", Net3D vs truth", "truth_": " vs truth",  # the synthetic world's true parameters
            "static_": ", doing nothing (Δp = 0)"}
BASELINE_PREFIXES = ("static_", "driving_truth_")  # columns shown beside their metric, not as metrics of their own
NOT_METRICS = set(FRAME_ID_COLUMNS) | set(FOUND_COLUMNS)


def describe(column: str) -> Metric:
    """The label of a frames.parquet metric column: csim, lpips, apd, apd_yaw, aed_exp_03, truth_apd, ..."""
    prefix = next((prefix for prefix in PREFIXES if column.startswith(prefix)), "")
    base = column.removeprefix(prefix)
    if base in BASE_METRICS:
        label, better = BASE_METRICS[base]
        return Metric(column, label + PREFIXES.get(prefix, ""), better, not column.startswith(BASELINE_PREFIXES))
    family, _, part = base.partition("_")
    label = f"{BASE_METRICS[family][0]} {part}" if family in BASE_METRICS else base
    return Metric(column, label + PREFIXES.get(prefix, ""), BASE_METRICS.get(family, ("", "lower"))[1], False)


def frame_metrics(frames: pd.DataFrame) -> list[Metric]:
    """The numeric metric columns of a frames table, in its order."""
    return [describe(column) for column in frames.columns
            if column not in NOT_METRICS and pd.api.types.is_numeric_dtype(frames[column])]


# --- the evaluation folder ------------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    """Everything the evaluate flow wrote, read once; the optional parts are None (or empty) when absent."""

    root: Path
    record: RunRecord  # config.json
    summary: EvaluationSummary  # summary.json
    frames: pd.DataFrame
    clips: pd.DataFrame
    linearity: pd.DataFrame | None = None
    sweep: pd.DataFrame | None = None
    throughput: pd.DataFrame | None = None
    samples: dict[str, list[Path]] = field(default_factory=dict)
    sets: dict[str, Evaluation] = field(default_factory=dict)  # a folder of several sets: each, by label

    @property
    def protocols(self) -> list[str]:
        return list(self.summary.protocols)

    def network(self, protocol: str, column: str) -> str:
        """The network that measured a metric of a protocol ("none" for a pixel difference)."""
        metrics = self.summary.protocols[protocol].metrics
        if column not in metrics or not metrics[column].n:
            return "—"
        return metrics[column].network or "none (pixel difference)"

    @property
    def weights_set(self) -> str:
        return self.summary.weights.set

    @property
    def dataset(self) -> str:
        return Path(self.record.config.store).name

    def not_measured(self, protocol: str, column: str) -> str:
        """Why a metric column of a protocol has no value: the switch that turned it off, or what it lacked."""
        config = self.record.config
        family = column.split("_")
        if "lpips" in family and not config.lpips:
            return "--no-lpips"
        if "lpips" in family or "pixel" in family:
            return "no ground-truth frame in cross-reenactment" if protocol == "cross" else "no frame measured it"
        if {"apd", "aed"} & set(family):
            return "the Net3D found no face" if len(self.frames) else "no frame evaluated"
        if "retrieval" in family:
            return "the source is not a clip of the store"
        return "no frame measured it"

    def distribution_not_measured(self, protocol: str) -> str | None:
        """Why FID/KID of a protocol have no value (None: they have one)."""
        scores = self.summary.protocols[protocol].distribution
        if not self.record.config.fid:
            return "--no-fid"
        if scores.fid is None:
            return f"needs 2 or more frames: {scores.n_fake} generated, {scores.n_real} driving"
        return None

    def linearity_not_measured(self) -> str:
        if not self.record.config.linearity:
            return "--no-linearity"
        return f"no {LINEARITY_FILE} in this folder"


def load_evaluation(path: str | Path) -> Evaluation:
    """Read an evaluation folder; `NotAnEvaluationError` names the files it lacks. A folder of several sets gives
    its first set, with every set under `sets`."""
    root = Path(path)
    if not root.is_dir():
        raise NotAnEvaluationError(f"{root} is not a directory: give the folder the evaluate flow wrote")
    chosen = EvaluationSets.find(root)
    if chosen:
        sets = {entry.label: load_evaluation(root / entry.label) for entry in chosen.sets}
        first = next(iter(sets.values()))
        first.sets = sets
        return first
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise NotAnEvaluationError(f"{root} is not an evaluation folder (written by the evaluate flow): it lacks "
                                   f"{', '.join(missing)}")
    return Evaluation(
        root=root, record=RunRecord.read(root), summary=EvaluationSummary.read(root),
        frames=pd.read_parquet(root / FRAMES_FILE), clips=pd.read_parquet(root / CLIPS_FILE),
        linearity=_read_fits(root / LINEARITY_FILE),
        sweep=pd.read_parquet(root / SWEEP_FILE) if (root / SWEEP_FILE).is_file() else None,
        throughput=read_throughput(root), samples=_find_samples(root / SAMPLES_DIR))


def _read_fits(path: Path) -> pd.DataFrame | None:
    """`fit_linearity`'s table; a direction never fitted has nulls, read as NaN."""
    if not path.is_file():
        return None
    fits = pd.read_parquet(path)
    for column in fits.columns.difference(["direction", "crosstalk_max_param"]):
        fits[column] = pd.to_numeric(fits[column], errors="coerce")
    return fits


def read_throughput(root: Path) -> pd.DataFrame | None:
    """The optional throughput table of an evaluation folder (see the module docstring), or None."""
    if (root / THROUGHPUT_PARQUET).is_file():
        table = pd.read_parquet(root / THROUGHPUT_PARQUET)
    elif (root / THROUGHPUT_JSON).is_file():
        records = json.loads((root / THROUGHPUT_JSON).read_text(encoding="utf-8"))
        if isinstance(records, dict):
            records = [{"module": name, "frames_per_second": value} for name, value in records.items()]
        table = pd.DataFrame(records)
    else:
        return None
    if not {"module", "frames_per_second"} <= set(table.columns):
        raise ValueError(f"the throughput table in {root} needs 'module' and 'frames_per_second' columns")
    return table


def _find_samples(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        return {}
    return {protocol.name: sorted(path for path in protocol.iterdir() if path.suffix.lower() in IMAGE_TYPES)
            for protocol in sorted(folder.iterdir()) if protocol.is_dir()}




def number_text(value: object) -> str:
    """A figure as the report prints it: 4 significant digits (1 decimal from 100 up); "—" for none."""
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)
