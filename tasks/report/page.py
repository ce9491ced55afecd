"""The report as one self-contained HTML page (every image inlined as a data URI, every value escaped), written
with its figures as PNG files beside it."""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from storage.files import atomic_path
from tasks.report.data import Evaluation, ReportConfig, number_text as _number
from tasks.report.figures import ReportImage, sample_images
from tasks.report.published import ARROWS, COMPARED, LABELS, Published, comparison_table, load_published
from tasks.report.statistics import BASELINES, headline_with_baselines, set_comparison, worse_than_doing_nothing

REPORT_HTML, FIGURES_DIR = "report.html", "figures"

class Raw(str):
    """Markup made here, inserted without escaping; every other value is escaped."""


def _escape(value: object) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


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
    environment = evaluation.summary.environment
    protocols = []
    for protocol, entry in evaluation.summary.protocols.items():
        found = ", ".join(f"{name} {share:.0%}" for name, share in entry.faces_found.model_dump().items()
                          if share is not None)
        protocols.append(f"{protocol}: {entry.pairs} pairs ({entry.pairs_failed} failed), {entry.frames} frames"
                         + (f"; faces found: {found}" if found else ""))
    rows = [("weights set", evaluation.weights_set), ("dataset", evaluation.dataset),
            ("evaluated", environment.time), ("commit", environment.git_commit or "not in a git checkout"),
            ("report made", time.strftime("%Y-%m-%d %H:%M:%S %Z")), ("protocols", "; ".join(protocols)),
            ("evaluation folder", str(evaluation.root.resolve()))]
    return f"<header><h1>Benchmark report</h1>{_facts(rows)}</header>"


def _mean(row: pd.Series) -> str:
    """A metric's mean, or why it has none."""
    return f"not measured ({row['not_measured']})" if row["not_measured"] else _number(row["mean"])


def _with_interval(row: pd.Series) -> str:
    """A mean with its clip interval (the one to quote), or why it has none."""
    if row["not_measured"]:
        return _mean(row)
    interval = _interval(row["clips_low"], row["clips_high"])
    return _mean(row) + ("" if interval == "—" else f" {interval}")


def _metric_rows(tables: pd.DataFrame) -> list[tuple]:
    return [(row["label"], row["better"], _mean(row), _number(row["std"]),
             _interval(row["clips_low"], row["clips_high"]), _interval(row["frames_low"], row["frames_high"]),
             row["clips"], row["frames"], row["missing"], row["network"]) for _, row in tables.iterrows()]


def _headline_rows(tables: pd.DataFrame, protocol: str) -> list[tuple]:
    """The headline metrics of a protocol, each beside its baselines (`BASELINES`), a result worse than doing
    nothing said so in its cell."""
    rows = []
    for row, baselines in headline_with_baselines(tables, protocol):
        mean = _mean(row)
        if worse_than_doing_nothing(row, baselines["static"]):
            mean = f"{mean} (worse than doing nothing)"
        rows.append((row["label"], row["better"], mean,
                     *(cell if isinstance(cell, str) else _with_interval(cell) for cell in baselines.values()),
                     _number(row["std"]), _interval(row["clips_low"], row["clips_high"]),
                     _interval(row["frames_low"], row["frames_high"]), row["clips"], row["frames"], row["missing"],
                     row["network"]))
    return rows


def _metrics_section(evaluation: Evaluation, tables: pd.DataFrame, config: ReportConfig) -> str:
    level = f"{config.level:.0%}"
    intervals = (f"{level} CI, clips resampled", f"{level} CI, frames resampled")
    header = ("metric", "better", "mean", "std", *intervals, "clips", "frames", "missing", "network")
    headline_header = ("metric", "better", "mean", *BASELINES.values(), "std", *intervals, "clips", "frames",
                       "missing", "network")
    parts = [_paragraph(
        f"Means over the frames that measured each metric, with {level} percentile-bootstrap intervals of the mean "
        f"({config.resamples} resamples, seed {config.seed}) computed two ways: whole clips (pairs) resampled, and "
        "frames resampled one by one. Frames of one clip are correlated, so the clip interval is the one to quote; "
        "the frame interval is narrower than the truth. 'missing': frames the metric could not be measured on "
        "(no face found), never dropped silently."),
        _paragraph("Every headline metric stands beside its baselines, measured on the same frames: 'doing nothing' "
                   "renders the source with Δp = 0 (a reenactment must beat it to have moved the face at all), and "
                   "'the driver itself' is the Net3D's reading of the real driving frame against the truth (the "
                   "floor no reenactment can pass), or the reference value where a metric compares with the driving "
                   "frame. Each baseline cell: its mean and clip interval; n/a: the metric has no such baseline.",
                   "note")]
    for protocol in evaluation.protocols:
        rows = tables[tables["protocol"] == protocol] if len(tables) else tables
        parts.append(f"<h3>{_escape(protocol)} reenactment</h3>")
        parts.append(_table(headline_header, _headline_rows(tables, protocol), "numbers headline"))
        parts.append(_distribution_table(evaluation, protocol))
        details = rows[~rows["headline"]] if len(rows) else rows
        if len(details):
            parts.append(f"<details><summary>every per-parameter and baseline column ({len(details)})</summary>"
                         f"{_table(header, _metric_rows(details), 'numbers')}</details>")
    parts.append(_paragraph("FID and KID are measured over a protocol's whole set of generated frames against its "
                            "driving frames, so they have no per-frame interval; KID's spread is over its random "
                            "subsets.", "note"))
    failed = evaluation.clips[evaluation.clips["status"] != "ok"] if "status" in evaluation.clips else []
    if len(failed):
        parts.append("<h3>Pairs that failed</h3>" + _table(("protocol", "pair", "error"),
                                                           failed[["protocol", "pair", "error"]].to_numpy()))
    return _section("metrics", "Metrics per protocol", *parts)


def _distribution_table(evaluation: Evaluation, protocol: str) -> str:
    header = ("set metric", "value", "KID std over subsets", "generated frames", "driving frames", "network", "route")
    why = evaluation.distribution_not_measured(protocol)
    if why:
        return _table(header, [(name, f"not measured ({why})", "", "", "", "", "") for name in ("FID", "KID")],
                      "numbers")
    scores = evaluation.summary.protocols[protocol].distribution
    shared = (scores.n_fake, scores.n_real, scores.network)
    kid_route = (f"{scores.kid_subsets} subsets of {scores.kid_subset_size}" if scores.kid_mean is not None
                 else "not measured")
    return _table(header, [("FID", _number(scores.fid), "", *shared, scores.fid_method),
                           ("KID", _number(scores.kid_mean), _number(scores.kid_std), *shared, kid_route)], "numbers")


def _sets_section(evaluation: Evaluation, config: ReportConfig) -> str:
    comparison = set_comparison(evaluation, config)
    parts = [_paragraph(f"{len(evaluation.sets)} weights sets evaluated on the same pairs. Each cell: the mean over "
                        f"frames and its {config.level:.0%} interval with clips resampled. 'doing nothing' renders "
                        f"the source with Δp = 0 and 'the driver itself' is the Net3D's reading of the driving frames "
                        f"({next(iter(evaluation.sets))}'s networks). The sections below are "
                        f"the first set's; `benchmark-report <folder>/<label>` gives any set's own report.")]
    for protocol, block in comparison.groupby("protocol", sort=False):
        metrics = list(dict.fromkeys(block["metric"]))
        labels = {row.metric: f"{row.label} ({row.better})" for row in block.itertuples()}
        cells = {(row.set, row.metric): f"not measured ({row.not_measured})" if row.not_measured
                 else f"{_number(row.mean)} {_interval(row.low, row.high)}" for row in block.itertuples()}
        rows = [(name, *(cells.get((name, metric), "n/a") for metric in metrics))
                for name in dict.fromkeys(block["set"])]
        parts += [f"<h3>{_escape(protocol)} reenactment</h3>",
                  _table(("set", *(labels[metric] for metric in metrics)), rows, "numbers")]
    return _section("sets", "Weights sets compared", *parts)


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
        return _section("linearity", "Linearity of the directions",
                        _paragraph(f"Not measured ({evaluation.linearity_not_measured()})."))
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
        return _section("throughput", "Throughput", _paragraph(
            "Not measured (no throughput.json or throughput.parquet in the evaluation folder; the benchmarks write "
            "one)."))
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
    facts = {"environment": summary.environment.model_dump(), "weights": summary.weights.model_dump(),
             "networks": {role: name or "not measured" for role, name in summary.networks.model_dump().items()},
             "aed ranges": summary.aed_ranges, "seeds": evaluation.record.seeds,
             "evaluation seconds": round(summary.seconds, 1)}
    return _section("environment", "Environment", _facts(_flatten(facts)))


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
        "settings": _section("settings", "Evaluation settings",
                             _facts(_flatten(evaluation.record.config.model_dump(mode="json")))),
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


