"""The benchmark report: bootstrap intervals on hand cases, published numbers tied to their sources, a clear error
for a folder that is not an evaluation, and the benchmark-report flow on the evaluate flow's folder of the demo
(bundled demo weights on the demo's synthetic people), rendered by headless Chromium with every image decoded."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from flows.benchmark_report import benchmark_report
from tasks.report import (
    NotAnEvaluationError,
    ReportConfig,
    bootstrap_mean,
    describe,
    find_chromium,
    load_evaluation,
    load_published,
    loaded_images,
    metric_tables,
    render_screenshot,
    report_figures,
    write_report,
)

ROOT = Path(__file__).resolve().parents[2]
needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="headless Chromium is not installed "
                                    "(apt-get install chromium; .ci/run installs it)")


# --- bootstrap intervals --------------------------------------------------------------------------------------------

def test_constant_values_give_a_zero_width_interval_at_their_value():
    values = np.full(40, 0.25)
    for groups in (None, np.repeat(np.arange(8), 5)):
        interval = bootstrap_mean(values, groups, resamples=500)
        assert interval.mean == interval.low == pytest.approx(0.25) and interval.high == pytest.approx(0.25)


def test_interval_of_known_values_centres_on_their_mean_leaves_out_nan_and_is_seeded():
    values = np.arange(1.0, 31.0)
    values[[4, 9]] = np.nan, 15.0  # one value missing, one changed
    interval = bootstrap_mean(values, resamples=4000, seed=3)
    assert interval.mean == pytest.approx(np.nanmean(values)) and interval.units == 29
    error = np.nanstd(values) / np.sqrt(29)  # the normal approximation: mean ± 1.96 standard errors
    assert interval.low == pytest.approx(interval.mean - 1.96 * error, abs=0.3)
    assert interval.high == pytest.approx(interval.mean + 1.96 * error, abs=0.3)
    assert bootstrap_mean(values, resamples=4000, seed=3) == interval
    assert bootstrap_mean(values, resamples=4000, seed=4) != interval
    lone = bootstrap_mean(values, groups=["one clip"] * len(values))
    assert lone.units == 1 and lone.mean == interval.mean and np.isnan(lone.low) and np.isnan(lone.high)
    assert np.isnan(bootstrap_mean([np.nan, np.nan]).mean)


def test_resampling_whole_clips_widens_the_interval_of_correlated_frames():
    """Four clips of 50 frames, each clip's frames alike: resampling frames one by one pretends 200 independent
    measurements and gives a far narrower interval than resampling the 4 clips, the honest one."""
    clips = np.repeat(np.arange(4), 50)
    values = clips + np.random.default_rng(0).normal(0, 0.01, len(clips))
    frames = bootstrap_mean(values, resamples=1000)
    whole = bootstrap_mean(values, groups=clips, resamples=1000)
    assert (frames.units, whole.units) == (200, 4) and frames.mean == whole.mean
    assert whole.high - whole.low > 5 * (frames.high - frames.low)


def test_metric_columns_are_named_in_the_fields_words():
    assert (describe("csim").label, describe("csim").headline) == ("CSIM", True)
    assert (describe("apd_yaw").label, describe("apd_yaw").headline) == ("APD yaw", False)
    assert describe("truth_aed").label == "AED vs truth" and describe("truth_aed").headline
    assert describe("driving_truth_apd_roll").label == "APD roll, Net3D vs truth"


# --- published numbers ----------------------------------------------------------------------------------------------

def test_every_published_number_carries_its_work_url_and_table():
    published = load_published()
    assert not published.works.empty and published.works["url"].str.startswith("https://").all()
    for row in published.results.itertuples():
        assert row.url.startswith("https://") and row.citation and row.table and np.isfinite(row.value)


def test_a_published_number_without_its_table_or_work_is_refused(tmp_path):
    work = {"key": "w", "method": "m", "citation": "c", "url": "https://example.org/paper"}
    entry = {"work": "w", "table": "Table 1", "protocol": "self", "dataset": "VoxCeleb1", "metric": "csim", "value": 0}
    for broken, message in (({**entry, "table": ""}, "lacks table"), ({**entry, "work": "v"}, "not among works"),
                            ({**entry, "metric": "ssim"}, "not one of")):
        path = tmp_path / "published.yaml"
        path.write_text(yaml.safe_dump({"works": [work], "results": [broken]}))
        with pytest.raises(ValueError, match=message):
            load_published(path)


def test_a_folder_that_is_not_an_evaluation_is_named_with_what_it_lacks(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotAnEvaluationError, match="summary.json, frames.parquet, clips.parquet"):
        load_evaluation(tmp_path)
    with pytest.raises(NotAnEvaluationError, match="not a directory"):
        load_evaluation(tmp_path / "nowhere")


# --- the demo evaluation ------------------------------------------------------------------------------------------

STORE_NAME = "worlds/<three people> & six pairs.zarr"  # a value the page must escape


@pytest.fixture(scope="module")
def evaluation(demo_evaluation, tmp_path_factory) -> Path:
    """A copy of the evaluate flow's folder on the demo's world with the bundled demo weights (tests/conftest.py),
    its store renamed to a value that needs escaping in HTML."""
    root = tmp_path_factory.mktemp("report") / "evaluation"
    shutil.copytree(demo_evaluation, root, ignore=shutil.ignore_patterns("report"))
    config = json.loads((root / "config.json").read_text())
    config["config"]["store"] = STORE_NAME
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_metric_tables_give_both_intervals_and_the_measuring_network(evaluation):
    loaded = load_evaluation(evaluation)
    tables = metric_tables(loaded, ReportConfig(resamples=500)).set_index(["protocol", "metric"])
    assert loaded.protocols == ["self", "cross"]
    assert ("cross", "lpips") not in tables.index and ("self", "lpips") in tables.index
    csim_self = tables.loc[("self", "csim")]
    assert (csim_self.frames, csim_self.clips, csim_self.network, csim_self.headline) == (12, 3, "dlib", True)
    assert csim_self.clips_low <= csim_self["mean"] <= csim_self.clips_high
    assert csim_self.frames_low <= csim_self["mean"] <= csim_self.frames_high
    frames = pd.read_parquet(evaluation / "frames.parquet")
    assert csim_self["mean"] == pytest.approx(frames.loc[frames.protocol == "self", "csim"].mean())
    assert tables.loc[("cross", "truth_apd"), "network"] == "synth-regressor"
    assert not tables.loc[("cross", "apd_yaw"), "headline"]


@pytest.fixture(scope="module")
def report(evaluation):
    """The benchmark-report flow, run under Prefect (ephemeral API), on the evaluation folder."""
    return benchmark_report(evaluation=str(evaluation), config=ReportConfig(resamples=500))


def _decoded(source: str) -> bytes:
    return base64.b64decode(source.split(",", 1)[1])


def test_the_flow_writes_one_self_contained_page_and_the_figures_as_png(evaluation, report):
    page = Path(report.report)
    assert page == evaluation / "report" / "report.html" and report.protocols == ["self", "cross"]
    names = sorted(Path(path).name for path in report.figures)
    assert names == ["crosstalk.png", "distributions.png", "linearity.png", "throughput.png"]
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert len(sources) == report.images == len(names) + 4  # the figures and four sample grids
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "file://" not in text and "http://" not in text
    for path in report.figures:
        png = Path(path).read_bytes()
        assert png.startswith(b"\x89PNG") and any(png == _decoded(source) for source in sources)
    assert "&lt;three people&gt; &amp; six pairs.zarr" in text and "<three people>" not in text  # values escaped
    assert "none are computed here" in text and "this run (demo)" in text
    assert "CI, clips resampled" in text and "CI, frames resampled" in text and "Not measured" not in text


@needs_chromium
def test_the_report_renders_in_headless_chromium_with_every_image_decoded(report, tmp_path):
    loaded, total = loaded_images(report.report)
    assert loaded == total == report.images > 0
    shot = render_screenshot(report.report, tmp_path / "report.png", width=1280, height=4000)
    image = cv2.imread(str(shot))
    assert image.shape == (4000, 1280, 3)
    assert image.std() > 20  # tables, plots and faces, not a blank page


def test_without_throughput_and_linearity_the_report_says_not_measured(evaluation, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(evaluation, partial, ignore=shutil.ignore_patterns("throughput.json", "linearity*", "report"))
    loaded = load_evaluation(partial)
    assert loaded.throughput is None and loaded.linearity is None
    config = ReportConfig(resamples=200)
    figures = report_figures(loaded)
    assert [figure.name for figure in figures] == ["distributions"]
    written = write_report(loaded, metric_tables(loaded, config), figures, partial / "report", config)
    text = written.report.read_text(encoding="utf-8")
    assert text.count("Not measured (") == 2 and written.images == 1 + 4


def test_a_published_number_appears_beside_this_run_with_its_source(evaluation, tmp_path):
    """Test data, not a published result: the path from an entry of the YAML to the page."""
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump({
        "works": [{"key": "example", "method": "Example method", "citation": "A. Author. An example. 2000.",
                   "url": "https://example.org/paper"}],
        "results": [{"work": "example", "table": "Table 9", "protocol": "self", "dataset": "VoxCeleb1",
                     "metric": "csim", "value": 0.5, "note": "test data"}]}))
    loaded = load_evaluation(evaluation)
    config = ReportConfig(resamples=200, published=str(path))
    written = write_report(loaded, metric_tables(loaded, config), [], tmp_path / "report", config)
    text = written.report.read_text(encoding="utf-8")
    assert written.published_rows == 1
    assert '<a href="https://example.org/paper">A. Author. An example. 2000. Table 9</a>' in text
    assert "No published numbers are entered yet" not in text


def test_the_deployments_run_the_flow_with_their_parameters():
    from prefect.flows import load_flow_from_entrypoint

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    ours = [entry for entry in deployments if entry["entrypoint"] == "flows/benchmark_report.py:benchmark_report"]
    assert {entry["name"] for entry in ours} == {"on-demand", "nightly"}
    flow = load_flow_from_entrypoint(str(ROOT / ours[0]["entrypoint"]))
    assert flow.name == "benchmark-report"
    for entry in ours:
        flow.validate_parameters(entry.get("parameters") or {})
