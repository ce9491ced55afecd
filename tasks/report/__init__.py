"""The benchmark report of an evaluation: metric tables with confidence intervals, each headline metric beside its
baselines (doing nothing, the driver itself), the published numbers beside this run's, figures, sample grids and the
environment, as one self-contained HTML file (every image inlined as a data URI), with the figures also written as
PNG files beside it.

    evaluation = load_evaluation("outputs/evaluation")   # the evaluate flow's folder; a missing file is named
    tables = metric_tables(evaluation, ReportConfig())   # per protocol and metric: mean, two 95 % CIs, the network
    figures = report_figures(evaluation)                 # distributions, linearity, cross-talk, throughput
    written = write_report(evaluation, tables, figures, "outputs/evaluation/report", ReportConfig())
    render_screenshot(written.report, "report.png")      # a picture of the page, by headless Chromium

The evaluation folder is the one `tasks.evaluate` describes (config.json, summary.json, frames.parquet,
clips.parquet, distribution.parquet, linearity tables, pairs/, samples/), read as typed objects (`data`). A folder
of several sets (sets.json and one such folder per set) gives the sets side by side first (`set_comparison`), then
the first set's report. A throughput table may be added beside them: throughput.json (a list of records, or
{module: frames/s}) or throughput.parquet, with `module` and `frames_per_second` and any other columns (device,
precision, batch_size, ...). A figure that is empty says why: "not measured (--no-fid)".

    data.py        the folder read (`Evaluation`), what a metric column means, why a figure is empty
    statistics.py  bootstrap intervals, the metric tables, baselines, several sets side by side
    published.py   published numbers tied to their sources
    figures.py     matplotlib figures and sample grids
    page.py        the HTML page and writing it
    chromium.py    headless Chromium: screenshot, images decoded
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.report.chromium import find_chromium, loaded_images, render_screenshot
from tasks.report.data import (Evaluation, Metric, NotAnEvaluationError, ReportConfig, describe, frame_metrics,
                               load_evaluation, read_throughput)
from tasks.report.figures import ReportImage, report_figures, sample_images
from tasks.report.page import WrittenReport, render_html, write_report
from tasks.report.published import Published, comparison_table, load_published
from tasks.report.statistics import Interval, bootstrap_mean, headline_with_baselines, metric_tables, set_comparison

__all__ = ["Evaluation", "Interval", "Metric", "NotAnEvaluationError", "Published", "ReportConfig", "ReportImage",
           "WrittenReport", "bootstrap_mean", "comparison_table", "describe", "find_chromium", "frame_metrics",
           "headline_with_baselines", "load_evaluation", "load_published", "loaded_images", "metric_tables",
           "read_throughput", "render_html", "render_screenshot", "report_figures", "sample_images",
           "set_comparison", "write_report"]


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
