"""The report's numbers: bootstrap intervals of the mean (frames, or whole clips, resampled), the table of every
metric per protocol, each headline metric's baselines (doing nothing, the driver itself) and several sets side by
side."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.report.data import Evaluation, ReportConfig, frame_metrics

# A headline metric's baselines, as columns of the same evaluation: the source rendered with Δp = 0 (doing
# nothing), and the Net3D's reading of the real driving frame (the driver itself: the floor of any reenactment).
BASELINES = {"static": "doing nothing (Δp = 0)", "driver": "the driver itself"}
# Metrics that compare a result with the driving frame: the driver itself scores the reference value exactly.
AGAINST_DRIVER = {"apd": 0.0, "aed": 0.0, "pixel": 0.0, "lpips": 0.0, "csim_driving": 1.0}


def baseline_column(metric: str, baseline: str) -> str:
    """The column of a metric's baseline: static_apd, static_truth_apd; driving_truth_apd."""
    return f"static_{metric}" if baseline == "static" else f"driving_{metric}"


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
        measured = evaluation.summary.protocols[protocol].metrics
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
                         "network": evaluation.network(protocol, metric.column),
                         "not_measured": "" if by_frame.units else evaluation.not_measured(protocol, metric.column)})
    return pd.DataFrame(rows)


def headline_with_baselines(tables: pd.DataFrame, protocol: str) -> list[tuple[pd.Series, dict[str, pd.Series | str]]]:
    """A protocol's headline rows of `metric_tables`, each with its baselines by name (`BASELINES`): the baseline's
    row of the table, or a sentence where the evaluation has none (the reference value, or why not)."""
    rows = tables[tables["protocol"] == protocol].set_index("metric", drop=False) if len(tables) else tables
    result = []
    for metric, row in rows[rows["headline"]].iterrows() if len(rows) else ():
        baselines: dict[str, pd.Series | str] = {}
        for baseline in BASELINES:
            column = baseline_column(metric, baseline)
            if column in rows.index:
                baselines[baseline] = rows.loc[column]
            elif baseline == "driver" and metric in AGAINST_DRIVER:
                baselines[baseline] = f"{AGAINST_DRIVER[metric]:g} (the reference itself)"
            elif baseline == "driver" and metric.startswith("truth_"):
                baselines[baseline] = "not measured (no reading of the driving frames)"
            else:
                baselines[baseline] = "n/a"
        result.append((row, baselines))
    return result


def worse_than_doing_nothing(row: pd.Series, static: pd.Series | str) -> bool:
    """Whether a headline mean is worse than the Δp = 0 render's, by the metric's own direction."""
    if isinstance(static, str) or not (math.isfinite(row["mean"]) and math.isfinite(static["mean"])):
        return False
    return row["mean"] > static["mean"] if row["better"] == "lower" else \
        row["mean"] < static["mean"] if row["better"] == "higher" else False


def set_comparison(evaluation: Evaluation, config: ReportConfig) -> pd.DataFrame:
    """The sets of a several-set folder side by side: per protocol, one row per set, then one per baseline of the
    first set (`BASELINES`, where a metric has one), one column per headline metric: its mean over frames and the
    interval with clips resampled."""
    rows, baseline_rows = [], []
    for label, chosen in evaluation.sets.items():
        tables = metric_tables(chosen, config)
        for protocol in chosen.protocols:
            rows += [{"protocol": protocol, "set": label, "weights": chosen.weights_set, "metric": row.metric,
                      "label": row.label, "better": row.better, "mean": row.mean, "low": row.clips_low,
                      "high": row.clips_high, "missing": row.missing, "not_measured": row.not_measured}
                     for row in tables[(tables["protocol"] == protocol) & tables["headline"]].itertuples()]
            if label == next(iter(evaluation.sets)):
                for row, baselines in headline_with_baselines(tables, protocol):
                    baseline_rows += [{"protocol": protocol, "set": BASELINES[name], "weights": chosen.weights_set,
                              "metric": row["metric"], "label": row["label"], "better": row["better"],
                              "mean": baseline["mean"], "low": baseline["clips_low"], "high": baseline["clips_high"],
                              "missing": baseline["missing"], "not_measured": baseline["not_measured"]}
                             for name, baseline in baselines.items() if not isinstance(baseline, str)]
    return pd.DataFrame(rows + baseline_rows, columns=["protocol", "set", "weights", "metric", "label", "better",
                                                       "mean", "low", "high", "missing", "not_measured"])


