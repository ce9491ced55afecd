"""The report's figures (matplotlib's object API, drawn with Agg without touching pyplot's global state) and its
sample grids, as PNG bytes."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from tasks.report.data import IMAGE_TYPES, Evaluation, frame_metrics, number_text as _number

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


