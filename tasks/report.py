"""The benchmark report of an evaluation: metric tables with confidence intervals, the published numbers beside this
run's, figures, sample grids and the environment, as one self-contained HTML file (every image inlined as a data
URI), with the figures also written as PNG files beside it.

    evaluation = load_evaluation("outputs/evaluation")   # the evaluate flow's folder; a missing file is named
    tables = metric_tables(evaluation, ReportConfig())   # per protocol and metric: mean, two 95 % CIs, the network
    figures = report_figures(evaluation)                 # distributions, linearity, cross-talk, throughput
    written = write_report(evaluation, tables, figures, "outputs/evaluation/report", ReportConfig())
    render_screenshot(written.report, "report.png")      # a picture of the page, by headless Chromium

The evaluation folder is the one `tasks.evaluate` describes (config.json, summary.json, frames.parquet,
clips.parquet, distribution.parquet, linearity tables, pairs/, samples/). A folder of several sets (sets.json and
one such folder per set) gives the sets side by side first (`set_comparison`), then the first set's report. A throughput table may be added beside
them: throughput.json (a list of records, or {module: frames/s}) or throughput.parquet, with `module` and
`frames_per_second` and any other columns (device, precision, batch_size, ...); without one the report says "not
measured".
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure  # the object API draws with Agg and never touches pyplot's global state
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from storage.files import atomic_path
from tasks.evaluate import (CLIPS_FILE, CONFIG_FILE, DISTRIBUTION_FILE, FOUND_COLUMNS, FRAME_ID_COLUMNS, FRAMES_FILE,
                            LINEARITY_FILE, SAMPLES_DIR, SUMMARY_FILE, SWEEP_FILE, read_sets)

REQUIRED_FILES = (CONFIG_FILE, SUMMARY_FILE, FRAMES_FILE, CLIPS_FILE, DISTRIBUTION_FILE)
THROUGHPUT_JSON, THROUGHPUT_PARQUET = "throughput.json", "throughput.parquet"
PUBLISHED_RESULTS = Path(__file__).resolve().parent / "data" / "published_results.yaml"
REPORT_HTML, FIGURES_DIR = "report.html", "figures"
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
    headline: bool  # shown in the main table; the per-parameter columns go to the detailed one


BASE_METRICS = {"csim": ("CSIM", "higher"), "csim_driving": ("CSIM to driving", "self higher; cross lower (leak)"),
                "lpips": ("LPIPS", "lower"), "apd": ("APD", "lower"), "aed": ("AED", "lower"),
                "pixel": ("pixel error", "lower"), "inversion": ("inversion error", "lower"),
                "identity_retrieval": ("identity retrieval", "higher")}
PREFIXES = {"truth_": " vs truth", "driving_truth_": ", Net3D vs truth"}  # the synthetic world's true parameters
NOT_METRICS = set(FRAME_ID_COLUMNS) | set(FOUND_COLUMNS)


def describe(column: str) -> Metric:
    """The label of a frames.parquet metric column: csim, lpips, apd, apd_yaw, aed_exp_03, truth_apd, ..."""
    prefix = next((prefix for prefix in PREFIXES if column.startswith(prefix)), "")
    base = column.removeprefix(prefix)
    if base in BASE_METRICS:
        label, better = BASE_METRICS[base]
        return Metric(column, label + PREFIXES.get(prefix, ""), better, True)
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
    config: dict
    summary: dict
    frames: pd.DataFrame
    clips: pd.DataFrame
    distribution: pd.DataFrame
    linearity: pd.DataFrame | None = None
    sweep: pd.DataFrame | None = None
    throughput: pd.DataFrame | None = None
    samples: dict[str, list[Path]] = field(default_factory=dict)
    sets: dict[str, Evaluation] = field(default_factory=dict)  # a folder of several sets: each, by label

    @property
    def protocols(self) -> list[str]:
        return list(self.summary.get("protocols") or dict.fromkeys(self.frames["protocol"].astype(str)))

    def protocol_summary(self, protocol: str) -> dict:
        return (self.summary.get("protocols") or {}).get(protocol) or {}

    def network(self, protocol: str, column: str) -> str:
        entry = (self.protocol_summary(protocol).get("metrics") or {}).get(column) or {}
        return str(entry.get("network") or "—")

    @property
    def weights_set(self) -> str:
        return str((self.summary.get("weights") or {}).get("set") or "—")

    @property
    def dataset(self) -> str:
        store = (self.config.get("config") or {}).get("store")
        return Path(store).name if store else "—"


def load_evaluation(path: str | Path) -> Evaluation:
    """Read an evaluation folder; `NotAnEvaluationError` names the files it lacks. A folder of several sets gives
    its first set, with every set under `sets`."""
    root = Path(path)
    if not root.is_dir():
        raise NotAnEvaluationError(f"{root} is not a directory: give the folder the evaluate flow wrote")
    chosen = read_sets(root)
    if chosen:
        sets = {entry["label"]: load_evaluation(root / entry["label"]) for entry in chosen}
        first = next(iter(sets.values()))
        first.sets = sets
        return first
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise NotAnEvaluationError(f"{root} is not an evaluation folder (written by the evaluate flow): it lacks "
                                   f"{', '.join(missing)}")
    return Evaluation(
        root=root, config=_read_json(root / CONFIG_FILE), summary=_read_json(root / SUMMARY_FILE),
        frames=pd.read_parquet(root / FRAMES_FILE), clips=pd.read_parquet(root / CLIPS_FILE),
        distribution=pd.read_parquet(root / DISTRIBUTION_FILE), linearity=_read_fits(root / LINEARITY_FILE),
        sweep=pd.read_parquet(root / SWEEP_FILE) if (root / SWEEP_FILE).is_file() else None,
        throughput=read_throughput(root), samples=_find_samples(root / SAMPLES_DIR))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


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
        records = _read_json(root / THROUGHPUT_JSON)
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


# --- confidence intervals -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval over `units` resampled units (frames or clips); NaN bounds below 2."""

    mean: float
    low: float
    high: float
    units: int


def bootstrap_mean(values: Sequence[float], groups: Sequence | None = None, resamples: int = 2000,
                   level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `values` (NaN values left out).

    Without `groups` each value is resampled on its own. With `groups` (a clip label per value) whole clips are
    resampled and the mean is taken over all frames of the drawn clips: frames of one clip are correlated, so
    resampling them one by one understates the uncertainty of a benchmark whose unit of sampling is the clip.
    """
    values = np.asarray(values, np.float64)
    keep = np.isfinite(values)
    if not keep.any():
        return Interval(math.nan, math.nan, math.nan, 0)
    labels = np.arange(keep.sum()) if groups is None else pd.factorize(np.asarray(groups)[keep])[0]
    sums, counts = np.bincount(labels, weights=values[keep]), np.bincount(labels).astype(np.float64)
    mean, units = float(values[keep].mean()), len(sums)
    if units < 2:
        return Interval(mean, math.nan, math.nan, units)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, 2_000_000 // units)  # bounds the index array at about 16 MB
    means = []
    for start in range(0, resamples, per_chunk):
        picks = rng.integers(0, units, (min(per_chunk, resamples - start), units))
        means.append(sums[picks].sum(axis=1) / counts[picks].sum(axis=1))
    low, high = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return Interval(mean, float(low), float(high), units)


def metric_tables(evaluation: Evaluation, config: ReportConfig) -> pd.DataFrame:
    """One row per protocol and metric the protocol measures: mean and std over the frames that measured it, the
    frames missing it, the interval with frames resampled and the one with clips resampled, the network."""
    rows = []
    options = dict(resamples=config.resamples, level=config.level, seed=config.seed)
    for protocol in evaluation.protocols:
        frames = evaluation.frames[evaluation.frames["protocol"] == protocol]
        measured = evaluation.protocol_summary(protocol).get("metrics") or {}
        for metric in frame_metrics(evaluation.frames):
            values = frames[metric.column].to_numpy(np.float64)
            if metric.column not in measured and not np.isfinite(values).any():
                continue  # not a metric of this protocol (LPIPS in cross: there is no ground-truth frame)
            by_frame = bootstrap_mean(values, **options)
            by_clip = bootstrap_mean(values, groups=frames["pair"].to_numpy(), **options)
            rows.append({"protocol": protocol, "metric": metric.column, "label": metric.label,
                         "better": metric.better, "headline": metric.headline, "mean": by_frame.mean,
                         "std": float(np.nanstd(values, ddof=1)) if by_frame.units > 1 else math.nan,
                         "frames": by_frame.units, "missing": int(np.isnan(values).sum()), "clips": by_clip.units,
                         "frames_low": by_frame.low, "frames_high": by_frame.high,
                         "clips_low": by_clip.low, "clips_high": by_clip.high,
                         "network": evaluation.network(protocol, metric.column)})
    return pd.DataFrame(rows)


def set_comparison(evaluation: Evaluation, config: ReportConfig) -> pd.DataFrame:
    """The sets of a several-set folder side by side: per protocol, one row per set and one for doing nothing (the
    Δp = 0 render of the first set, where a metric has its `static_` twin), one column per headline metric: its
    mean over frames and the interval with clips resampled."""
    rows = []
    for label, chosen in evaluation.sets.items():
        tables = metric_tables(chosen, config)
        for protocol in chosen.protocols:
            rows += [{"protocol": protocol, "set": label, "weights": chosen.weights_set, "metric": row.metric,
                      "label": row.label, "better": row.better, "mean": row.mean, "low": row.clips_low,
                      "high": row.clips_high, "missing": row.missing}
                     for row in tables[(tables["protocol"] == protocol) & tables["headline"]].itertuples()]
            if label == next(iter(evaluation.sets)):
                measured = tables[tables["protocol"] == protocol].set_index("metric")
                rows += [{"protocol": protocol, "set": "doing nothing (Δp = 0)", "weights": chosen.weights_set,
                          "metric": metric, "label": describe(metric).label, "better": describe(metric).better,
                          "mean": measured.loc[f"static_{metric}", "mean"],
                          "low": measured.loc[f"static_{metric}", "clips_low"],
                          "high": measured.loc[f"static_{metric}", "clips_high"],
                          "missing": measured.loc[f"static_{metric}", "missing"]}
                         for metric in measured.index if f"static_{metric}" in measured.index]
    return pd.DataFrame(rows, columns=["protocol", "set", "weights", "metric", "label", "better", "mean", "low",
                                       "high", "missing"])


def _sets_section(evaluation: Evaluation, config: ReportConfig) -> str:
    comparison = set_comparison(evaluation, config)
    parts = [_paragraph(f"{len(evaluation.sets)} weights sets evaluated on the same pairs. Each cell: the mean over "
                        f"frames and its {config.level:.0%} interval with clips resampled. 'doing nothing' renders "
                        f"the source with Δp = 0 ({next(iter(evaluation.sets))}'s networks). The sections below are "
                        f"the first set's; `benchmark-report <folder>/<label>` gives any set's own report.")]
    for protocol, block in comparison.groupby("protocol", sort=False):
        metrics = list(dict.fromkeys(block["metric"]))
        labels = {row.metric: f"{row.label} ({row.better})" for row in block.itertuples()}
        cells = {(row.set, row.metric): f"{_number(row.mean)} {_interval(row.low, row.high)}"
                 for row in block.itertuples()}
        rows = [(name, *(cells.get((name, metric), "—") for metric in metrics))
                for name in dict.fromkeys(block["set"])]
        parts += [f"<h3>{_escape(protocol)} reenactment</h3>",
                  _table(("set", *(labels[metric] for metric in metrics)), rows, "numbers")]
    return _section("sets", "Weights sets compared", *parts)


# --- published numbers ----------------------------------------------------------------------------------------------

COMPARED = ("csim", "lpips", "fid", "apd", "aed")  # the paper's columns that this pipeline measures too
LABELS = {**{name: label for name, (label, _) in BASE_METRICS.items()}, "fid": "FID"}
ARROWS = {"csim": "↑", "lpips": "↓", "fid": "↓", "apd": "↓", "aed": "↓"}
WORK_FIELDS = ("key", "method", "citation", "url")
RESULT_FIELDS = ("work", "table", "protocol", "dataset", "metric", "value")


@dataclass(frozen=True)
class Published:
    works: pd.DataFrame  # key, method, citation, url
    results: pd.DataFrame  # one row per number: its work's fields, table, protocol, dataset, metric, value, note


def load_published(path: str | Path | None = None) -> Published:
    """The published numbers, each tied to a cited work (with its URL) and the table it was read from; an entry
    that lacks any of that is refused, so no number enters the report without its source."""
    path = Path(path) if path else PUBLISHED_RESULTS
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    works = {}
    for work in data.get("works") or []:
        _require(work, WORK_FIELDS, path, "work")
        works[work["key"]] = {name: str(work[name]).strip() for name in WORK_FIELDS}
    rows = []
    for result in data.get("results") or []:
        _require(result, RESULT_FIELDS, path, "published result")
        if result["work"] not in works:
            raise ValueError(f"{path}: published result {result} cites {result['work']!r}, which is not among works")
        if result["metric"] not in COMPARED:
            raise ValueError(f"{path}: metric {result['metric']!r} is not one of {', '.join(COMPARED)}")
        rows.append({**works[result["work"]], "table": str(result["table"]), "protocol": str(result["protocol"]),
                     "dataset": str(result["dataset"]), "metric": result["metric"], "value": float(result["value"]),
                     "note": str(result.get("note") or "")})
    return Published(pd.DataFrame(list(works.values()), columns=list(WORK_FIELDS)),
                     pd.DataFrame(rows, columns=[*WORK_FIELDS, "table", "protocol", "dataset", "metric", "value",
                                                 "note"]))


def _require(entry: dict, names: Sequence[str], path: Path, what: str) -> None:
    missing = [name for name in names if entry.get(name) in (None, "")]
    if missing:
        raise ValueError(f"{path}: a {what} lacks {', '.join(missing)}: {entry}")


def comparison_table(published: Published, tables: pd.DataFrame, evaluation: Evaluation) -> pd.DataFrame:
    """The paper's metrics side by side: one row per published (work, table, protocol, dataset), then one
    "this run" row per protocol, naming the networks that measured this run's numbers."""
    rows = []
    keys = ["method", "citation", "url", "table", "protocol", "dataset"]
    for (method, citation, url, table, protocol, dataset), group in published.results.groupby(keys, sort=False):
        rows.append({"method": method, "protocol": protocol, "dataset": dataset,
                     **dict(zip(group["metric"], group["value"])), "source": f"{citation} {table}", "url": url,
                     "note": "; ".join(sorted({note for note in group["note"] if note}))})
    for protocol in evaluation.protocols:
        measured = tables[tables["protocol"] == protocol].set_index("metric") if len(tables) else pd.DataFrame()
        values = {name: measured.loc[name, "mean"] for name in COMPARED if name in measured.index}
        networks = [f"{LABELS[name]}: {measured.loc[name, 'network']}" for name in values]
        distribution = _distribution_row(evaluation, protocol)
        if distribution is not None:
            values["fid"] = distribution.get("fid")
            networks.append(f"FID: {distribution.get('network', '—')}")
        rows.append({"method": f"this run ({evaluation.weights_set})", "protocol": protocol,
                     "dataset": evaluation.dataset, **values, "source": "this evaluation", "url": "",
                     "note": "; ".join(networks)})
    return pd.DataFrame(rows, columns=["method", "protocol", "dataset", *COMPARED, "source", "url", "note"])


def _distribution_row(evaluation: Evaluation, protocol: str) -> dict | None:
    rows = evaluation.distribution[evaluation.distribution["protocol"].astype(str) == protocol]
    return rows.iloc[0].to_dict() if len(rows) else None


# --- figures --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportImage:
    """An image of the report: a figure drawn here or a sample grid of the evaluation."""

    name: str
    title: str
    caption: str
    data: bytes
    mime: str = "image/png"

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _grid(count: int, columns: int, cell: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(cell[0] * columns, cell[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for spare in axes[count:]:
        spare.set_visible(False)
    return figure, axes


def distributions_figure(frames: pd.DataFrame) -> ReportImage | None:
    """A histogram per headline metric with values, the protocols overlaid, their means dashed."""
    metrics = [metric for metric in frame_metrics(frames) if metric.headline and frames[metric.column].notna().any()]
    if not metrics:
        return None
    figure, axes = _grid(len(metrics), 3, (4.2, 3.0))
    colours = {protocol: f"C{index}" for index, protocol in enumerate(dict.fromkeys(frames["protocol"]))}
    for axis, metric in zip(axes, metrics):
        values = frames[metric.column].astype(float)
        edges = np.histogram_bin_edges(values.dropna(), bins=int(np.clip(values.notna().sum() // 4, 5, 30)))
        for protocol, group in values.groupby(frames["protocol"], sort=False):
            finite = group.dropna().to_numpy()
            if len(finite):
                axis.hist(finite, bins=edges, histtype="stepfilled", alpha=0.45, color=colours[protocol],
                          label=f"{protocol} (n={len(finite)})")
                axis.axvline(finite.mean(), color=colours[protocol], linestyle="--", linewidth=1)
        axis.set_title(f"{metric.label} ({metric.better})", fontsize=10)
        axis.set_ylabel("frames")
        axis.legend(fontsize=8)
    return ReportImage("distributions", "Per-frame distributions",
                       "Histograms of the per-frame metrics per protocol; dashed lines are the means.", _png(figure))


def linearity_figure(sweep: pd.DataFrame | None, fits: pd.DataFrame | None) -> ReportImage | None:
    """Per fitted direction: the measured response of its own parameter against the requested magnitude, its mean
    per magnitude, the least-squares line and the ideal y = x."""
    fitted = fits[fits["points"] > 0] if fits is not None else None
    if sweep is None or fitted is None or fitted.empty:
        return None
    figure, axes = _grid(len(fitted), 4, (3.2, 2.8))
    found = sweep[sweep["found"].astype(bool)]
    for axis, fit in zip(axes, fitted.itertuples()):
        own = found[found["direction"] == fit.direction]
        response = own[f"d_{fit.direction}"]
        span = np.array([own["magnitude"].min(), own["magnitude"].max()])
        axis.scatter(own["magnitude"], response, s=10, alpha=0.5, color="C0", label="measured")
        means = response.groupby(own["magnitude"]).mean()
        axis.plot(means.index, means.to_numpy(), "o-", color="C0", markersize=3, linewidth=1, label="mean")
        axis.plot(span, fit.slope * span + fit.intercept, color="C3", linewidth=1.5, label="fit")
        axis.plot(span, span, color="grey", linestyle=":", linewidth=1, label="ideal")
        axis.set_title(f"{fit.direction}: slope {_number(fit.slope)}, R² {_number(fit.r2)}", fontsize=9)
        axis.set_xlabel("requested (shift units)", fontsize=8)
        axis.set_ylabel("measured", fontsize=8)
    axes[0].legend(fontsize=7)
    return ReportImage("linearity", "Linearity curves",
                       "Each direction's own response against the requested magnitude (faces the Net3D found), with "
                       "the least-squares line and R²; the dotted line is the ideal response.", _png(figure))


def crosstalk_figure(fits: pd.DataFrame | None) -> ReportImage | None:
    """Heat map of the cross-talk: mean |response| / |magnitude| of every other parameter, per direction."""
    params = [column.removeprefix("crosstalk_") for column in (fits.columns if fits is not None else [])
              if column.startswith("crosstalk_") and column not in ("crosstalk_max", "crosstalk_max_param")]
    matrix = fits[[f"crosstalk_{param}" for param in params]].to_numpy(np.float64) if params else np.zeros((0, 0))
    if not np.isfinite(matrix).any():
        return None
    figure = Figure(figsize=(max(6.0, 0.55 * len(params) + 2), max(2.5, 0.45 * len(fits) + 1.5)),
                    layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(np.ma.masked_invalid(matrix), cmap=colormaps["viridis"].with_extremes(bad="#dddddd"),
                        aspect="auto")
    axis.set_xticks(range(len(params)), params, rotation=60, fontsize=8)
    axis.set_yticks(range(len(fits)), fits["direction"], fontsize=8)
    axis.set_xlabel("parameter that moved")
    axis.set_ylabel("direction asked")
    bright = np.nanmax(matrix) * 0.6
    for row, column in zip(*np.nonzero(np.isfinite(matrix))):
        value = matrix[row, column]
        axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                  color="black" if value > bright else "white")
    figure.colorbar(image, ax=axis, label="mean |response| / |magnitude|")
    return ReportImage("crosstalk", "Cross-talk",
                       "How much asking one direction moves each other parameter (0 is ideal; grey: the direction's "
                       "own parameter, which the slope describes, or nothing measured).", _png(figure))


def throughput_figure(throughput: pd.DataFrame | None) -> ReportImage | None:
    if throughput is None or throughput.empty:
        return None
    details = [name for name in ("device", "precision", "batch_size") if name in throughput.columns]
    labels = [" ".join(str(value) for value in row if pd.notna(value))
              for row in throughput[["module", *details]].itertuples(index=False)]
    figure = Figure(figsize=(8, 0.45 * len(labels) + 1.2), layout="constrained")
    axis = figure.subplots()
    axis.barh(labels, throughput["frames_per_second"].astype(float), color="C2")
    axis.invert_yaxis()
    axis.set_xlabel("frames / s")
    return ReportImage("throughput", "Throughput", "Frames per second per module, as measured by the benchmarks.",
                       _png(figure))


def report_figures(evaluation: Evaluation) -> list[ReportImage]:
    """The figures the evaluation has data for, in the order the page shows them."""
    figures = (distributions_figure(evaluation.frames), linearity_figure(evaluation.sweep, evaluation.linearity),
               crosstalk_figure(evaluation.linearity), throughput_figure(evaluation.throughput))
    return [figure for figure in figures if figure is not None]


def sample_images(evaluation: Evaluation, per_protocol: int) -> dict[str, list[ReportImage]]:
    """The first sample grids of each protocol, in the evaluation's protocol order."""
    order = {protocol: index for index, protocol in enumerate(evaluation.protocols)}
    return {protocol: [ReportImage(path.stem, path.stem, "source | driving | result", path.read_bytes(),
                                   IMAGE_TYPES[path.suffix.lower()])
                       for path in evaluation.samples[protocol][:per_protocol]]
            for protocol in sorted(evaluation.samples, key=lambda name: order.get(name, len(order)))}


# --- the page -------------------------------------------------------------------------------------------------------

class Raw(str):
    """Markup made here, inserted without escaping; every other value is escaped."""


def _escape(value: object) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def _number(value: object) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def _interval(low: float, high: float) -> str:
    return f"[{_number(low)}, {_number(high)}]" if math.isfinite(low) and math.isfinite(high) else "—"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], css: str = "") -> str:
    head = "".join(f"<th>{_escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td>{_escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _facts(rows: Iterable[tuple[str, object]]) -> str:
    return _table(("", ""), rows, "facts")


def _section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{_escape(title)}</h2>{"".join(parts)}</section>'


def _paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{_escape(text)}</p>'


def _image(image: ReportImage) -> str:
    return (f'<figure><img src="{image.data_uri}" alt="{_escape(image.title)}">'
            f"<figcaption>{_escape(image.caption)}</figcaption></figure>")


def _header(evaluation: Evaluation) -> str:
    environment = evaluation.summary.get("environment") or {}
    protocols = []
    for protocol in evaluation.protocols:
        entry = evaluation.protocol_summary(protocol)
        found = ", ".join(f"{name} {share:.0%}" for name, share in (entry.get("faces_found") or {}).items()
                          if share is not None)
        protocols.append(f"{protocol}: {entry.get('pairs', '?')} pairs ({entry.get('pairs_failed', 0)} failed), "
                         f"{entry.get('frames', '?')} frames" + (f"; faces found: {found}" if found else ""))
    rows = [("weights set", evaluation.weights_set), ("dataset", evaluation.dataset),
            ("evaluated", environment.get("time", "—")), ("commit", environment.get("git_commit") or "—"),
            ("report made", time.strftime("%Y-%m-%d %H:%M:%S %Z")), ("protocols", "; ".join(protocols)),
            ("evaluation folder", str(evaluation.root.resolve()))]
    return f"<header><h1>Benchmark report</h1>{_facts(rows)}</header>"


def _metric_rows(tables: pd.DataFrame) -> list[tuple]:
    return [(row.label, row.better, _number(row.mean), _number(row.std), _interval(row.clips_low, row.clips_high),
             _interval(row.frames_low, row.frames_high), row.clips, row.frames, row.missing, row.network)
            for row in tables.itertuples()]


def _metrics_section(evaluation: Evaluation, tables: pd.DataFrame, config: ReportConfig) -> str:
    level = f"{config.level:.0%}"
    header = ("metric", "better", "mean", "std", f"{level} CI, clips resampled", f"{level} CI, frames resampled",
              "clips", "frames", "missing", "network")
    parts = [_paragraph(
        f"Means over the frames that measured each metric, with {level} percentile-bootstrap intervals of the mean "
        f"({config.resamples} resamples, seed {config.seed}) computed two ways: whole clips (pairs) resampled, and "
        "frames resampled one by one. Frames of one clip are correlated, so the clip interval is the one to quote; "
        "the frame interval is narrower than the truth. 'missing': frames the metric could not be measured on "
        "(no face found), never dropped silently.")]
    for protocol in evaluation.protocols:
        rows = tables[tables["protocol"] == protocol] if len(tables) else tables
        parts.append(f"<h3>{_escape(protocol)} reenactment</h3>")
        parts.append(_table(header, _metric_rows(rows[rows["headline"]]) if len(rows) else [], "numbers"))
        distribution = _distribution_row(evaluation, protocol)
        if distribution is not None:
            parts.append(_distribution_table(distribution))
        details = rows[~rows["headline"]] if len(rows) else rows
        if len(details):
            parts.append(f"<details><summary>every per-parameter column ({len(details)})</summary>"
                         f"{_table(header, _metric_rows(details), 'numbers')}</details>")
    parts.append(_paragraph("FID and KID are measured over a protocol's whole set of generated frames against its "
                            "driving frames, so they have no per-frame interval; KID's spread is over its random "
                            "subsets.", "note"))
    failed = evaluation.clips[evaluation.clips["status"] != "ok"] if "status" in evaluation.clips else []
    if len(failed):
        parts.append("<h3>Pairs that failed</h3>" + _table(("protocol", "pair", "error"),
                                                           failed[["protocol", "pair", "error"]].to_numpy()))
    return _section("metrics", "Metrics per protocol", *parts)


def _distribution_table(row: dict) -> str:
    header = ("set metric", "value", "KID std over subsets", "generated frames", "driving frames", "network", "route")
    shared = (_number(row.get("n_fake")), _number(row.get("n_real")), row.get("network", "—"))
    return _table(header, [("FID", _number(row.get("fid")), "", *shared, row.get("fid_method") or "—"),
                           ("KID", _number(row.get("kid_mean")), _number(row.get("kid_std")), *shared,
                            f"{_number(row.get('kid_subsets'))} subsets of {_number(row.get('kid_subset_size'))}")],
                  "numbers")


def _comparison_section(comparison: pd.DataFrame, published: Published) -> str:
    header = ("method", "protocol", "dataset", *(f"{LABELS[name]} {ARROWS[name]}" for name in COMPARED), "source",
              "measured with")
    rows = [(row.method, row.protocol, row.dataset, *(_number(getattr(row, name)) for name in COMPARED),
             Raw(f'<a href="{_escape(row.url)}">{_escape(row.source)}</a>') if row.url else row.source, row.note)
            for row in comparison.itertuples()]
    parts = [_table(header, rows, "numbers"),
             _paragraph("Numbers are entered from the cited sources; none are computed here.", "note")]
    if published.results.empty:
        parts.append(_paragraph("No published numbers are entered yet (tasks/data/published_results.yaml says "
                                "how): only this run's rows are shown.", "note"))
    parts.append(_paragraph("This run's identity network (CSIM) and Net3D (APD, AED) may differ from the papers' "
                            "(ArcFace, DECA): the last column names them, and numbers measured by different "
                            "networks do not compare exactly.", "note"))
    cited = "".join(f'<li>{_escape(work.citation)} <a href="{_escape(work.url)}">{_escape(work.url)}</a></li>'
                    for work in published.works.itertuples())
    if cited:
        parts.append(f"<h3>Cited works</h3><ul>{cited}</ul>")
    return _section("published", "Against published numbers", *parts)


def _linearity_section(evaluation: Evaluation, figures: dict[str, ReportImage]) -> str:
    fits = evaluation.linearity
    if fits is None or fits.empty:
        return _section("linearity", "Linearity of the directions", _paragraph("Not measured."))
    rows = [(fit.direction, _number(fit.slope), _number(fit.intercept), _number(fit.r2), fit.points,
             _number(fit.crosstalk), f"{fit.crosstalk_max_param} ({_number(fit.crosstalk_max)})"
             if pd.notna(fit.crosstalk_max_param) else "—") for fit in fits.itertuples()]
    parts = [_table(("direction", "slope (ideal 1)", "intercept (ideal 0)", "R²", "points", "mean cross-talk",
                     "worst cross-talk"), rows, "numbers")]
    if (fits["points"] == 0).any():
        parts.append(_paragraph("A direction with 0 points: the Net3D found no face in any of its swept images.",
                                "note"))
    parts += [_image(figures[name]) for name in ("linearity", "crosstalk") if name in figures]
    return _section("linearity", "Linearity of the directions", *parts)


def _throughput_section(evaluation: Evaluation, figures: dict[str, ReportImage]) -> str:
    table = evaluation.throughput
    if table is None or table.empty:
        return _section("throughput", "Throughput", _paragraph("Not measured."))
    images = [_image(figures["throughput"])] if "throughput" in figures else []
    rows = [[_number(value) for value in row] for row in table.itertuples(index=False)]
    return _section("throughput", "Throughput", *images, _table(list(table.columns), rows, "numbers"))


def _samples_section(samples: dict[str, list[ReportImage]]) -> str:
    if not any(samples.values()):
        return _section("samples", "Samples", _paragraph("No sample grids in this evaluation."))
    parts = [_paragraph("Each grid: source | driving | result, one row per frame.")]
    for protocol, images in samples.items():
        cells = "".join(f'<figure><img src="{image.data_uri}" alt="{_escape(image.name)}">'
                        f"<figcaption>{_escape(image.name)}</figcaption></figure>" for image in images)
        parts.append(f'<h3>{_escape(protocol)}</h3><div class="samples">{cells}</div>')
    return _section("samples", "Samples", *parts)


def _flatten(data: object, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted key, value) rows; a list of plain values is one row."""
    if isinstance(data, dict):
        return [pair for key, value in data.items() for pair in _flatten(value, f"{prefix}{key}.")]
    if isinstance(data, list) and any(isinstance(item, (dict, list)) for item in data):
        return [pair for index, value in enumerate(data) for pair in _flatten(value, f"{prefix}{index}.")]
    text = ", ".join(map(str, data)) if isinstance(data, list) else "—" if data is None else str(data)
    return [(prefix.rstrip("."), text)]


def _environment_section(evaluation: Evaluation) -> str:
    summary = evaluation.summary
    facts = {"environment": summary.get("environment"), "weights": summary.get("weights"),
             "networks": summary.get("networks"), "aed ranges": summary.get("aed_ranges"),
             "seeds": evaluation.config.get("seeds"), "evaluation seconds": summary.get("seconds")}
    return _section("environment", "Environment", _facts(_flatten({k: v for k, v in facts.items() if v is not None})))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1220px; color: #1d1d1f; }}
h1 {{ margin: 0 0 8px; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 32px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} td {{ overflow-wrap: break-word; }}
table.numbers td {{ font-variant-numeric: tabular-nums; }}
table.facts td:first-child {{ font-weight: 600; }} table.facts thead {{ display: none; }}
.note {{ color: #555; font-size: 13px; }} summary {{ cursor: pointer; color: #333; margin-bottom: 8px; }}
figure {{ margin: 8px 0 16px; }} figure img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 13px; }}
.samples {{ display: flex; flex-wrap: wrap; gap: 12px; }} .samples figure {{ margin: 0; max-width: 390px; }}
.samples figcaption {{ overflow-wrap: anywhere; }}
nav a {{ margin-right: 12px; }}
</style></head>
<body>
{header}
<nav>{nav}</nav>
{sections}
<script>
// Counts the images the browser decoded, for headless checks: data-images-loaded == data-images-total.
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(function (image) {{
    return image.complete && image.naturalWidth > 0; }}).length;
}});
</script>
</body></html>
"""


def render_html(evaluation: Evaluation, tables: pd.DataFrame, figures: Sequence[ReportImage],
                published: Published, config: ReportConfig) -> str:
    """The whole report as one HTML string: images inline, every value escaped."""
    by_name = {figure.name: figure for figure in figures}
    distributions = [_image(by_name["distributions"])] if "distributions" in by_name else [_paragraph("No values.")]
    sections = {
        **({"sets": _sets_section(evaluation, config)} if len(evaluation.sets) > 1 else {}),
        "metrics": _metrics_section(evaluation, tables, config),
        "published": _comparison_section(comparison_table(published, tables, evaluation), published),
        "distributions": _section("distributions", "Distributions", *distributions),
        "linearity": _linearity_section(evaluation, by_name),
        "throughput": _throughput_section(evaluation, by_name),
        "samples": _samples_section(sample_images(evaluation, config.samples_per_protocol)),
        "environment": _environment_section(evaluation),
        "settings": _section("settings", "Evaluation settings", _facts(_flatten(evaluation.config.get("config")))),
    }
    return PAGE.format(title=_escape(f"Benchmark report: {evaluation.weights_set} on {evaluation.dataset}"),
                       header=_header(evaluation), nav="".join(f'<a href="#{name}">{name}</a>' for name in sections),
                       sections="\n".join(sections.values()))


# --- writing --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WrittenReport:
    report: Path
    figures: list[Path]
    images: int  # <img> elements of the page
    published_rows: int


def write_report(evaluation: Evaluation, tables: pd.DataFrame, figures: Sequence[ReportImage], out: str | Path,
                 config: ReportConfig) -> WrittenReport:
    """report.html and figures/<name>.png under `out`, each file written whole or not at all."""
    out = Path(out)
    published = load_published(config.published)
    paths = []
    for figure in figures:
        paths.append(out / FIGURES_DIR / f"{figure.name}.png")
        with atomic_path(paths[-1]) as partial:
            partial.write_bytes(figure.data)
    page = render_html(evaluation, tables, figures, published, config)
    with atomic_path(out / REPORT_HTML) as partial:
        partial.write_text(page, encoding="utf-8")
    return WrittenReport(out / REPORT_HTML, paths, page.count("<img "), len(published.results))


# --- headless Chromium ----------------------------------------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Without the networking switches Chromium waits for services it cannot reach on a closed network, and hangs.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio", "--virtual-time-budget=5000")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _chromium(page: str | Path, arguments: Sequence[str], workdir: Path, timeout: float) -> str:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("headless Chromium is not installed (Debian: apt-get install chromium)")
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", *arguments,
               Path(page).resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}) on {page}: {done.stderr[-2000:]}")
    return done.stdout


def render_screenshot(page: str | Path, png: str | Path, width: int = 1280, height: int = 4000,
                      timeout: float = 120) -> Path:
    """A PNG of the page's top `height` pixels at `width`, as headless Chromium renders it."""
    with tempfile.TemporaryDirectory(prefix="reenact-chromium-") as folder, atomic_path(png) as partial:
        shot = Path(folder) / "page.png"  # Chromium picks the format by the suffix, so not the partial's name
        _chromium(page, [f"--screenshot={shot}", f"--window-size={width},{height}"], Path(folder), timeout)
        shutil.move(shot, partial)
    return Path(png)


def loaded_images(page: str | Path, timeout: float = 120) -> tuple[int, int]:
    """(images decoded, images on the page) once the page loaded in headless Chromium, as the page's own script
    counted them into <body>."""
    with tempfile.TemporaryDirectory(prefix="reenact-chromium-") as folder:
        dom = _chromium(page, ["--dump-dom"], Path(folder), timeout)
    body = re.search(r"<body[^>]*>", dom)
    counts = dict(re.findall(r'data-images-(loaded|total)="(\d+)"', body.group(0) if body else ""))
    if set(counts) != {"loaded", "total"}:
        raise RuntimeError(f"{page}: the page did not report its images (did its script run?)")
    return int(counts["loaded"]), int(counts["total"])


# --- Prefect tasks --------------------------------------------------------------------------------------------------

@task(name="load-evaluation", cache_policy=NO_CACHE)
def load_evaluation_task(path: str) -> Evaluation:
    return load_evaluation(path)


@task(name="metric-tables", cache_policy=NO_CACHE)
def metric_tables_task(evaluation: Evaluation, config: ReportConfig) -> pd.DataFrame:
    return metric_tables(evaluation, config)


@task(name="report-figures", cache_policy=NO_CACHE)
def report_figures_task(evaluation: Evaluation) -> list[ReportImage]:
    return report_figures(evaluation)


@task(name="write-report", cache_policy=NO_CACHE)
def write_report_task(evaluation: Evaluation, tables: pd.DataFrame, figures: list[ReportImage], out: str,
                      config: ReportConfig) -> WrittenReport:
    return write_report(evaluation, tables, figures, out, config)


@task(name="screenshot-report", cache_policy=NO_CACHE)
def screenshot_task(page: Path, png: Path) -> Path:
    return render_screenshot(page, png)
