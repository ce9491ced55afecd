"""`benchmark-report`: an evaluation directory into one self-contained HTML report and its figures as PNG files."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from pydantic import Field

from flows.options import POSITIONAL
from flows.summary import FlowSummary, publish, shown
from tasks.report import (ReportConfig, load_evaluation_task, metric_tables_task, report_figures_task,
                          screenshot_task, write_report_task)

SCREENSHOT = "report.png"


class BenchmarkReportSummary(FlowSummary):
    evaluation: str
    report: str
    figures: list[str]
    screenshot: str | None
    protocols: list[str]
    metric_rows: int
    published_rows: int
    images: int
    seconds: float

    def lines(self) -> list[str]:
        lines = [f"report:  {shown(self.report)} ({self.images} images, {len(self.figures)} figures)"]
        return lines + ([f"picture: {shown(self.screenshot)}"] if self.screenshot else [])


@flow(name="benchmark-report", log_prints=True)
def benchmark_report(
    evaluation: str = Field("outputs/evaluation", description="An evaluation folder written by `reenact evaluate`.", json_schema_extra=POSITIONAL),
    out: str | None = Field(None, description="Folder for report.html and figures/ (default: EVALUATION/report)."),
    config: ReportConfig = ReportConfig(),
) -> BenchmarkReportSummary:
    """A self-contained HTML benchmark report of an evaluation, with its figures as PNG files beside it.

    Write `out`/report.html (default `evaluation`/report): metric tables with bootstrap intervals per protocol,
    the published numbers beside this run's, distributions, linearity curves and cross-talk, throughput, sample
    grids and the environment, every image inlined; the figures also as `out`/figures/*.png."""
    started = time.perf_counter()
    out_dir = Path(out) if out else Path(evaluation) / "report"
    loaded = load_evaluation_task(evaluation)
    tables = metric_tables_task(loaded, config)
    figures = report_figures_task(loaded)
    written = write_report_task(loaded, tables, figures, str(out_dir), config)
    screenshot = screenshot_task(written.report, out_dir / SCREENSHOT) if config.screenshot else None
    summary = BenchmarkReportSummary(
        evaluation=str(evaluation), report=str(written.report), figures=[str(path) for path in written.figures],
        screenshot=str(screenshot) if screenshot else None, protocols=loaded.protocols, metric_rows=len(tables),
        published_rows=written.published_rows, images=written.images, seconds=time.perf_counter() - started)
    publish(summary, "benchmark-report", link=summary.report)
    return summary

