"""The benchmark report: bootstrap intervals on hand cases, published numbers tied to their sources, a clear error
for a folder that is not an evaluation, the benchmark-report flow on an evaluation folder of the synthetic world
(every number measured), rendered by headless Chromium with every image decoded, and the whole path from the demo
videos through the evaluate flow (slow)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from flows.benchmark_report import benchmark_report
from models.directions import NUM_PARAMS, PARAM_NAMES, DirectionMatrix, FaceParams
from models.face3d import build_face3d
from models.identity import build_identity
from models.metrics.inception import build_fid_inception
from models.metrics.lpips import build_lpips
from models.synth.head import sample_identity
from models.synth.render import render_with_landmarks
from storage.files import sha256_file
from tasks.evaluate import (DISTRIBUTION_COLUMNS, clip_means, environment, evaluated_frames, linearity_summary,
                            metric_summary, sample_grid, write_json, write_png, write_table)
from tasks.metrics import (csim, distribution_scores, expression_distance, fit_linearity, inception_features, lpips,
                           pose_distance, sweep_directions)
from tasks.protocols import ReenactPair, write_pairs
from tasks.report import (NotAnEvaluationError, ReportConfig, bootstrap_mean, describe, find_chromium,
                          load_evaluation, load_published, loaded_images, metric_tables, render_screenshot,
                          report_figures, write_report)
from tests.tasks.test_metrics import RenderingGenerator, params_at, synthetic_ranges

ROOT = Path(__file__).resolve().parents[2]
REGRESSOR_FILE = ROOT / "models" / "data" / "face3d_synth_regressor.safetensors"
CLIP_FRAMES = 3  # self evaluates frames 1-2 (frame 0 is the source), cross all 3
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


# --- an evaluation folder of the synthetic world ---------------------------------------------------------------------

def _motion(seed: int) -> np.ndarray:
    """CLIP_FRAMES frames of head turn, nod, jaw and smile, different per clip: the true parameters [T, 15]."""
    rng = np.random.default_rng(seed)
    start, end = rng.uniform(-1, 1, (2, 4)) * [20, 10, 6, 0.3]
    params = params_at([(0, 0, 0)] * CLIP_FRAMES)
    params[:, :4] = start + (end - start) * np.linspace(0, 1, CLIP_FRAMES)[:, None]
    params[:, 3] = np.abs(params[:, 3])
    params[:, 4] = np.linspace(0, 0.6, CLIP_FRAMES)
    return params


class World:
    """Two synthetic people, one clip each, and the world's own reenactor: the source person rendered with the
    Net3D's (the shipped regressor's) reading of each driving frame. Every metric is the real metric function."""

    def __init__(self):
        self.regressor, self.ranges = build_face3d("synth-regressor"), synthetic_ranges()
        self.identity, self.lpips = build_identity("dlib"), build_lpips(random_backbone=True)
        self.people = [sample_identity(seed) for seed in (1, 2)]
        self.truth = [_motion(seed) for seed in range(2)]
        started = time.perf_counter()
        self.clips = [render_with_landmarks(person, truth) for person, truth in zip(self.people, self.truth)]
        self.render_fps = 2 * CLIP_FRAMES / (time.perf_counter() - started)
        self.networks = {"identity": self.identity.name, "lpips": self.lpips.name, "inception": None,
                         "net3d": self.regressor.name, "generator": "synthetic head renderer",
                         "encoder": None, "directions": "the renderer's own parameters"}

    def read(self, frames: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        estimate = self.regressor.estimate(frames, landmarks)
        return estimate.to_array()[:, :NUM_PARAMS], estimate.found.numpy()

    def evaluate(self, pair: ReenactPair, protocol: str, source_person: int, driving_person: int):
        """The pair's frames table in tasks.evaluate's layout, its source, driving frames and results."""
        frames = evaluated_frames(CLIP_FRAMES, protocol, None)
        real, real_landmarks = (array[frames] for array in self.clips[driving_person])
        truth = self.truth[driving_person][frames]
        driving_params, driving_found = self.read(real, real_landmarks)
        results, result_landmarks = render_with_landmarks(self.people[source_person], driving_params)
        result_params, result_found = self.read(results, result_landmarks)
        source = self.clips[source_person][0][0]  # the first frame of the source's clip, as evaluate takes it
        count, found = len(frames), result_found & driving_found
        tables = [
            pd.DataFrame({"protocol": protocol, "pair": pair.name, "source": pair.source or pair.driving,
                          "source_frame": 0, "driving": pair.driving, "frame": frames,
                          "result_found": result_found, "driving_found": driving_found}),
            csim(self.identity, results, np.repeat(source[None], count, axis=0)).table,
            csim(self.identity, results, real).table.add_suffix("_driving"),
            lpips(self.lpips, results, real).table if protocol == "self"
            else pd.DataFrame({"lpips": np.full(count, np.nan)}),
            *self.face_errors(result_params, driving_params, found),
            *self.face_errors(result_params, truth, result_found, "truth_"),
            *self.face_errors(driving_params, truth, driving_found, "driving_truth_")]
        return pd.concat(tables, axis=1), source, real, results

    def face_errors(self, params, references, found, prefix: str = "") -> list[pd.DataFrame]:
        backend = self.regressor.name
        return [pose_distance(params, references, backend, found).table.add_prefix(prefix),
                expression_distance(params, references, self.ranges, backend, found).table.add_prefix(prefix)]

    def linearity(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(fits, sweep) of known directions (each moves its own parameter; yaw drags pitch by half), read back."""
        directions = DirectionMatrix(shift_dim=NUM_PARAMS, input_dim=NUM_PARAMS, num_layers=1)
        with torch.no_grad():
            directions.linear.weight.copy_(torch.eye(NUM_PARAMS))
            directions.linear.weight[PARAM_NAMES.index("pitch"), PARAM_NAMES.index("yaw")] = 0.5
            directions.linear.bias.zero_()
        start = params_at([(4.0, -2.0, 1.0)])
        wplus = self.ranges.to_shift_space(FaceParams.from_vector(torch.from_numpy(start))).float()[:, None]
        sweep = sweep_directions(RenderingGenerator(5, self.ranges), directions, self.regressor, wplus, self.ranges,
                                 magnitudes=(-3.0, 0.0, 3.0), which=("yaw", "exp_00"))
        return fit_linearity(sweep), sweep


def distribution_row(protocol: str, fakes: list[np.ndarray], reals: list[np.ndarray], inception) -> dict:
    """FID/KID of one frame per pair (Inception takes about a second an image on 2 loaded cores)."""
    scores = distribution_scores(inception_features(inception, np.stack(fakes)),
                                 inception_features(inception, np.stack(reals)), inception.name, kid_subsets=10,
                                 fid_method="auto")
    return {"protocol": protocol, "fid": scores.fid, "kid_mean": scores.kid, "kid_std": scores.kid_std,
            "kid_subsets": scores.kid_subsets, "kid_subset_size": scores.kid_subset_size, "n_real": len(reals),
            "n_fake": len(fakes), "network": scores.network, "fid_method": scores.fid_method}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> Path:
    """An evaluation folder in tasks.evaluate's layout, written with its own writers, every number measured on
    the synthetic world: the self and the cross protocol, two pairs each (random-weight LPIPS and Inception,
    named so)."""
    started = time.perf_counter()
    root, world = tmp_path_factory.mktemp("evaluation"), World()
    pairs = {"self": [(ReenactPair(name=f"self_{i}", driving=f"clip:person{i}/motion/00001", mode="self"), i, i)
                      for i in range(2)],
             "cross": [(ReenactPair(name=f"cross_{s}__{d}", driving=f"clip:person{d}/motion/00001",
                                    source=f"clip:person{s}/motion/00001"), s, d) for s, d in ((0, 1), (1, 0))]}
    inception = build_fid_inception(random_weights=True)
    world.networks["inception"] = inception.name
    tables, distribution, reenacted = [], [], 0
    for protocol, chosen in pairs.items():
        write_pairs([pair for pair, _, _ in chosen], root / "pairs" / f"{protocol}.parquet")
        fakes, reals = [], []
        for pair, source_person, driving_person in chosen:
            table, source, real, results = world.evaluate(pair, protocol, source_person, driving_person)
            write_png(root / "samples" / protocol / f"{pair.name}.png", sample_grid(source, real[:2], results[:2]))
            tables.append(table)
            fakes.append(results[0])
            reals.append(real[0])
            reenacted += len(results)
        distribution.append(distribution_row(protocol, fakes, reals, inception))
    frames = pd.concat(tables, ignore_index=True)
    write_table(frames, root / "frames.parquet")
    write_table(clip_means(frames).assign(status="ok", error=None), root / "clips.parquet")
    write_table(pd.DataFrame(distribution, columns=DISTRIBUTION_COLUMNS), root / "distribution.parquet")
    fits, sweep = world.linearity()
    write_table(fits, root / "linearity.parquet")
    write_table(sweep, root / "linearity_sweep.parquet")
    (root / "throughput.json").write_text(json.dumps([
        {"module": "synthetic head renderer", "device": "cpu", "frames_per_second": world.render_fps},
        {"module": "reenact and measure", "device": "cpu", "frames_per_second": reenacted
         / (time.perf_counter() - started)}]))
    metrics = metric_summary(frames, world.networks)
    weights = {"set": "synthetic-world", "sha256": {"synth-regressor": sha256_file(REGRESSOR_FILE)}}
    protocols = {protocol: {"pairs": len(chosen), "pairs_failed": 0, "frames": int((frames.protocol == protocol).sum()),
                            "faces_found": {"result": float(frames.result_found.mean()),
                                            "driving": float(frames.driving_found.mean())},
                            "metrics": metrics[protocol], "distribution": row}
                 for (protocol, chosen), row in zip(pairs.items(), distribution)}
    write_json(root / "config.json", {
        "config": {"store": "worlds/<two people> & four pairs.zarr", "protocols": list(pairs), "seed": 0},
        "weights": weights, "networks": world.networks, "seeds": {"pairs": 0, "kid": 2020}})
    write_json(root / "summary.json", {
        "protocols": protocols, "linearity": linearity_summary(fits, world.networks), "networks": world.networks,
        "aed_ranges": "the synthetic world's table", "weights": weights, "environment": environment(
            torch.device("cpu")), "seconds": time.perf_counter() - started})
    return root


def test_metric_tables_give_both_intervals_and_the_measuring_network(evaluation):
    loaded = load_evaluation(evaluation)
    tables = metric_tables(loaded, ReportConfig(resamples=500)).set_index(["protocol", "metric"])
    assert loaded.protocols == ["self", "cross"]
    assert ("cross", "lpips") not in tables.index and ("self", "lpips") in tables.index
    csim_self = tables.loc[("self", "csim")]
    assert (csim_self.frames, csim_self.clips, csim_self.network, csim_self.headline) == (4, 2, "dlib", True)
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
    assert "&lt;two people&gt; &amp; four pairs.zarr" in text and "<two people>" not in text  # values escaped
    assert "none are computed here" in text and "this run (synthetic-world)" in text
    assert "CI, clips resampled" in text and "CI, frames resampled" in text and "Not measured." not in text


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
    assert text.count("Not measured.") == 2 and written.images == 1 + 4


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


# --- the whole path on the demo videos ------------------------------------------------------------------------------

@pytest.mark.slow
@needs_chromium
def test_the_report_of_the_evaluate_flow_on_the_demo_videos_renders_in_chromium(tmp_path):
    """The bundled demo videos preprocessed, evaluated by the real evaluate flow with tiny random networks of the
    demo set's layout (so the Net3D finds no face in the results: APD and AED are missing, and the report says
    so), then reported, with a screenshot."""
    from flows.evaluate import evaluate
    from flows.preprocess_dataset import preprocess_dataset
    from tasks.evaluate import EvaluateConfig
    from tasks.metrics import MetricsConfig
    from tasks.preprocess import PreprocessConfig
    from tasks.reenact import ReenactConfig
    from tests.flows.test_evaluate import write_tiny_weights
    from tests.media import DEMO_VIDEOS

    store = tmp_path / "demo.zarr"
    assert preprocess_dataset(input=str(DEMO_VIDEOS), store=str(store), config=PreprocessConfig(fps=5)).ok == 5
    weights = str(write_tiny_weights(tmp_path / "weights"))
    config = EvaluateConfig(
        store=str(store), out=str(tmp_path / "evaluation"), max_clips=3, cross_count=2, frames_per_clip=2,
        samples=2, sample_frames=2, linearity_sources=1, linearity_directions=["yaw", "jaw"],
        linearity_magnitudes=[-4.0, 0.0, 4.0], reenact=ReenactConfig(weights="demo", weights_dir=weights, device="cpu"),
        metrics=MetricsConfig(identity="dlib", weights_dir=weights, device="cpu", kid_subsets=10))
    evaluate(config=config)
    summary = benchmark_report(evaluation=config.out, config=ReportConfig(resamples=200, screenshot=True))
    assert summary.protocols == ["self", "cross"] and summary.images == len(summary.figures) + 4
    loaded, total = loaded_images(summary.report)
    assert loaded == total == summary.images
    text = Path(summary.report).read_text(encoding="utf-8")
    assert "this run (demo)" in text and "the Net3D found no face" in text
    shot = cv2.imread(summary.screenshot)
    assert shot.shape == (4000, 1280, 3) and shot.std() > 20
