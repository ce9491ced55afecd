"""The evaluate flow on a real store of the synthetic world, with tiny random networks of the demo set's layout:
the output contract, the protocols' pairs, NaN handling where a face is not found, the truth, the samples, reruns,
the aggregation on a hand case, and bad requests through the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from flows.cli import app
from flows.evaluate import evaluate
from flows.make_synthetic_dataset import make_synthetic_dataset
from flows.preprocess_dataset import preprocess_dataset
from models.directions import PARAM_NAMES, DirectionMatrix
from models.e4e import Encoder4Editing
from models.feature_transformer import FeatureTransformer
from models.metrics.fid import frechet_distance
from models.stylegan2 import Generator
from storage.files import sha256_file
from storage.store import ClipKey, ClipStore
from tasks.evaluate import (EvaluateConfig, RunRecord, check_request, clip_means, evaluated_frames, metric_summary,
                            read_truth)
from tasks.evaluation_summary import EvaluationSets, EvaluationSummary, Networks
from tasks.metrics import MetricsConfig, fid_of_features, lpips, metric_networks
from tasks.protocols import cross_pairs, self_pairs
from tasks.reenact import ReenactConfig, networks_for, prepare_inputs
from tasks.synthesize import SynthConfig
from tests.weights import write_metric_weights
from training.common.checkpoints import Export, save_export

FRAMES_PER_CLIP = 2  # Inception-v3 takes 0.6 s an image here: every frame counts twice (result and real)
TINY = {"generator": {"size": 256, "style_dim": 64, "n_mlp": 2, "channel_max": 16},
        "encoder": {"num_layers": 18, "size": 256, "style_dim": 64, "channel_max": 16, "input_size": 32},
        "directions": {"shift_dim": 64, "input_dim": 15, "w_plus": True, "num_layers": 8, "bias": True},
        "feature_transformer": {"channels": 16, "resolution": 32, "image_size": 256, "hidden": 8}}


def write_tiny_weights(root):
    """The demo set's files for tiny random networks at 256 px (safetensors with their constructor arguments, as
    the training stages export them), and random LPIPS-trunk and FID-Inception files: every path real, the faces
    noise."""
    torch.manual_seed(0)
    for name, builder, key, module in (
            ("generator", "models.stylegan2:Generator", "g_ema", Generator(**TINY["generator"])),
            ("encoder", "models.e4e:Encoder4Editing", "e", Encoder4Editing(**TINY["encoder"])),
            ("directions", "models.directions:DirectionMatrix", "A_matrix", DirectionMatrix(**TINY["directions"])),
            ("feature_transformer", "models.feature_transformer:FeatureTransformer", "feature_transformer",
             FeatureTransformer(**TINY["feature_transformer"]))):
        entries = {"shift_scale": 6.0} if name == "directions" else {}
        save_export(Export(module.eval(), builder, TINY[name], key, entries), root / "demo" / f"{name}.safetensors",
                    torch.float32, {})
    return write_metric_weights(root)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three synthetic people, one short clip each (0.5-0.6 s), preprocessed into a store; tiny weights."""
    root = tmp_path_factory.mktemp("evaluate")
    videos = make_synthetic_dataset(out=str(root / "world"), config=SynthConfig(
        identities=3, videos_per_identity=1, clips_per_video=1, min_seconds=0.5, max_seconds=0.6, seed=5))
    assert preprocess_dataset(input=videos.out, store=str(root / "s.zarr")).ok == 3
    write_tiny_weights(root / "weights")
    return root


def config_for(world, out, **changes) -> EvaluateConfig:
    weights = str(world / "weights")
    settings = dict(
        store=str(world / "s.zarr"), out=str(out), truth=str(world / "world" / "truth.parquet"), max_clips=None,
        cross_count=2, frames_per_clip=FRAMES_PER_CLIP, samples=2, sample_frames=2, linearity_sources=1,
        linearity_directions=["yaw", "jaw"], linearity_magnitudes=[0.0, 4.0],
        reenact=ReenactConfig(weights="demo", weights_dir=weights, device="cpu"),
        metrics=MetricsConfig(identity="dlib", weights_dir=weights, device="cpu", kid_subsets=10))
    return EvaluateConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def run(world):
    """One evaluation of both protocols, with the truth and a small linearity sweep."""
    config = config_for(world, world / "out")
    return config, evaluate(config=config)


@pytest.mark.slow
def test_every_file_of_the_contract_is_written_and_parses(run, world):
    config, summary = run
    out = world / "out"
    store = ClipStore.open(world / "s.zarr", create=False)
    assert summary.pairs == {"self": 3, "cross": 2} and summary.failed == {"self": 0, "cross": 0}
    expected = {"self": self_pairs(store), "cross": cross_pairs(store, 2, seed=0)}
    for protocol, pairs in expected.items():
        saved = pd.read_parquet(out / "pairs" / f"{protocol}.parquet")
        assert saved.equals(pd.DataFrame([pair.model_dump() for pair in pairs]))  # the protocols' own draw

    frames = pd.read_parquet(out / "frames.parquet")
    assert len(frames) == sum(summary.frames.values()) == 5 * FRAMES_PER_CLIP
    for name in ("protocol", "pair", "source", "source_frame", "driving", "frame", "result_found", "driving_found",
                 "csim", "csim_driving", "lpips", "apd", "apd_yaw", "aed", "aed_exp_10", "truth_apd", "truth_aed",
                 "driving_truth_apd", "driving_truth_aed_jaw"):
        assert name in frames.columns, name
    self_frames = frames[frames["protocol"] == "self"]
    assert (self_frames["frame"] > 0).all() and (self_frames["source"] == self_frames["driving"]).all()

    clips = pd.read_parquet(out / "clips.parquet")
    assert list(clips["status"]) == ["ok"] * 5 and list(clips["frames"]) == [FRAMES_PER_CLIP] * 5
    assert list(clips["pair"]) == [pair.name for pairs in expected.values() for pair in pairs]

    assert json.loads((out / "config.json").read_text())["config"] == json.loads(config.model_dump_json())
    recorded = RunRecord.read(out)
    assert recorded.config == config
    assert recorded.weights.sha256["demo-generator"] == sha256_file(world / "weights/demo/generator.safetensors")
    assert recorded.networks.net3d == "synth-regressor" and recorded.networks.identity == "dlib"
    assert recorded.aed_ranges == "the demo directions' table"  # the store has no ranges file

    written = EvaluationSummary.read(out)
    environment = written.environment
    assert environment.torch == torch.__version__ and environment.device == "cpu" and environment.time
    assert written.weights.set == "demo" and written.networks == recorded.networks
    assert sorted(path.name for path in (out / "samples" / "self").iterdir()) == sorted(
        f"{pair.name}.png" for pair in expected["self"][:2])
    assert not list(out.rglob("*.tmp"))  # nothing half-written left behind


@pytest.mark.slow
def test_metrics_are_numbers_where_measurable_and_missing_where_no_face_is_found(run, world):
    _, summary = run
    out = world / "out"
    frames = pd.read_parquet(out / "frames.parquet")
    written = EvaluationSummary.read(out)
    self_frames, cross = frames[frames["protocol"] == "self"], frames[frames["protocol"] == "cross"]
    assert np.isfinite(self_frames["lpips"]).all() and (self_frames["lpips"] > 0).all()
    assert cross["lpips"].isna().all() and "lpips" not in written.protocols["cross"].metrics
    assert np.isfinite(frames[["csim", "csim_driving"]]).all().all()  # the embedder reads aligned crops as they are

    # APD / AED need the Net3D to read both faces; frames where it could not are NaN, and counted
    readable = frames["result_found"] & frames["driving_found"]
    assert (frames["apd"].isna() == ~readable).all() and (frames["truth_apd"].isna() == ~frames["result_found"]).all()
    assert frames["driving_found"].all()  # the real synthetic faces are read; the tiny G's noise (almost) never
    for protocol, group in frames.groupby("protocol"):
        metrics = written.protocols[protocol].metrics
        assert metrics["apd"].n_missing == int((~readable[group.index]).sum())
        assert metrics["apd"].n + metrics["apd"].n_missing == len(group)
        assert metrics["apd"].network == "synth-regressor" and metrics["csim"].network == "dlib"
        for name in ("csim", "csim_driving", "driving_truth_apd", "driving_truth_aed"):
            assert metrics[name].mean == pytest.approx(group[name].mean(), rel=1e-9)
            assert metrics[name].std == pytest.approx(group[name].std(), rel=1e-9)
    assert written.protocols["self"].metrics["lpips"].network == "lpips-alex-v0.1"

    # the regressor's own error on the real driving frames, against the world's truth: about a degree (README)
    assert frames["driving_truth_apd"].mean() < 4.0 and frames["driving_truth_aed"].notna().all()

    distribution = pd.read_parquet(out / "distribution.parquet").set_index("protocol")
    assert list(distribution.index) == ["self", "cross"]
    assert np.isfinite(distribution[["fid", "kid_mean", "kid_std"]].to_numpy(float)).all()
    assert (distribution["network"] == "fid-inception-2015-12-05").all()
    assert (distribution["fid_method"] == "span").all()  # 6 and 4 images: fewer than 2048 features
    assert list(distribution["n_fake"]) == list(distribution["n_real"]) == [3 * FRAMES_PER_CLIP, 2 * FRAMES_PER_CLIP]
    assert summary.headline["self"]["fid"] == pytest.approx(distribution.loc["self", "fid"])


@pytest.mark.slow
def test_sample_grids_hold_the_source_the_driving_frame_and_the_result(run, world):
    config, _ = run
    frames = pd.read_parquet(world / "out" / "frames.parquet")
    row = frames[frames["protocol"] == "cross"].iloc[1]
    grid = np.asarray(Image.open(world / "out" / "samples" / "cross" / f"{row['pair']}.png"))
    assert grid.shape == (2 * 256, 3 * 256, 3) and grid.dtype == np.uint8
    source_panel, driving_panel, result_panel = (grid[256:, 256 * i:256 * (i + 1)] for i in range(3))
    store = ClipStore.open(world / "s.zarr", create=False)
    clip = store.clip(ClipKey.parse(row["driving"].removeprefix("clip:")))
    assert (driving_panel == clip.frames(row["frame"], row["frame"] + 1)[0]).all()
    source, driving = prepare_inputs(row["driving"], row["source"], 0, "cross", config.reenact,
                                     networks_for(config.reenact), store)
    assert (source_panel == source.crop).all()
    again = networks_for(config.reenact).generate(source, driving.params[[row["frame"]]])[0]
    assert (result_panel == again).all()  # the reenactment code's own frame, deterministic
    network = metric_networks(config.metrics).lpips
    self_row = frames[frames["protocol"] == "self"].iloc[0]
    self_grid = np.asarray(Image.open(world / "out" / "samples" / "self" / f"{self_row['pair']}.png"))
    measured = lpips(network, self_grid[None, :256, 512:], self_grid[None, :256, 256:512]).table["lpips"][0]
    assert measured == pytest.approx(self_row["lpips"], rel=1e-5)  # LPIPS of the result vs its ground truth


@pytest.mark.slow
def test_linearity_tables_fit_every_requested_direction(run, world):
    fits = pd.read_parquet(world / "out" / "linearity.parquet")
    sweep = pd.read_parquet(world / "out" / "linearity_sweep.parquet")
    assert list(fits["direction"]) == ["yaw", "jaw"] and {"slope", "r2", "crosstalk", "points"} <= set(fits.columns)
    assert len(sweep) == 2 * 2 * 1 and set(sweep["magnitude"]) == {0.0, 4.0}
    assert sweep["source_clip"].str.startswith("clip:").all()
    assert (fits["points"] == [int(sweep[sweep["direction"] == d]["found"].sum()) for d in ("yaw", "jaw")]).all()
    written = EvaluationSummary.read(world / "out").linearity
    assert written.directions == 2 and written.networks["net3d"] == "synth-regressor"


@pytest.mark.slow
def test_a_rerun_of_one_protocol_replaces_the_previous_results(run, world, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(world / "out", out)
    (out / "notes.txt").write_text("mine")
    summary = evaluate(config=config_for(world, out, protocols=["cross"], linearity=False))
    assert summary.pairs == {"cross": 2}
    assert not (out / "pairs" / "self.parquet").exists() and not (out / "samples" / "self").exists()
    assert not (out / "linearity.parquet").exists() and (out / "notes.txt").read_text() == "mine"
    first = pd.read_parquet(world / "out" / "frames.parquet")
    again = pd.read_parquet(out / "frames.parquet")
    pd.testing.assert_frame_equal(again, first[first["protocol"] == "cross"].reset_index(drop=True))
    assert pd.read_parquet(out / "pairs" / "cross.parquet").equals(pd.read_parquet(world / "out/pairs/cross.parquet"))


# --- pieces on hand cases ---------------------------------------------------------------------------------------------

def test_aggregation_of_a_hand_made_frames_table_gives_the_known_means():
    frames = pd.DataFrame({
        "protocol": ["self"] * 3 + ["cross"] * 2, "pair": ["a", "a", "b", "c", "c"],
        "source": ["s1", "s1", "s2", "s3", "s3"], "source_frame": 0, "driving": ["s1", "s1", "s2", "d", "d"],
        "frame": [1, 2, 1, 0, 5], "result_found": [True, False, True, True, True], "driving_found": True,
        "csim": [0.5, 0.7, 0.9, 0.2, 0.4], "lpips": [0.1, 0.3, 0.2, np.nan, np.nan],
        "apd": [2.0, np.nan, 4.0, 1.0, 3.0], "truth_aed": [0.1, np.nan, np.nan, 0.2, 0.4]})
    clips = clip_means(frames).set_index("pair")
    assert list(clips["frames"]) == [2, 1, 2]
    assert clips.loc["a", "csim"] == pytest.approx(0.6) and clips.loc["a", "apd"] == 2.0  # NaN left out
    assert clips.loc["a", "result_found"] == 0.5 and np.isnan(clips.loc["c", "lpips"])

    networks = Networks(identity="dlib", lpips="lpips-alex-v0.1", net3d="synth-regressor", generator="g",
                        encoder="e", directions="a")
    summary = metric_summary(frames, networks)
    assert set(summary["self"]) == {"csim", "lpips", "apd", "truth_aed"} and "lpips" not in summary["cross"]
    assert summary["self"]["csim"].model_dump() == {"mean": pytest.approx(0.7), "std": pytest.approx(0.2), "n": 3,
                                                    "n_missing": 0, "network": "dlib"}
    assert summary["self"]["apd"].mean == 3.0 and summary["self"]["apd"].n_missing == 1
    assert summary["self"]["truth_aed"].model_dump() == {"mean": pytest.approx(0.1), "std": None, "n": 1,
                                                         "n_missing": 2, "network": "synth-regressor"}
    assert summary["cross"]["apd"].mean == 2.0 and summary["self"]["lpips"].network == "lpips-alex-v0.1"


def test_evaluated_frames_skip_the_self_source_and_spread_evenly():
    assert list(evaluated_frames(5, "self", None)) == [1, 2, 3, 4]
    assert list(evaluated_frames(5, "cross", None)) == [0, 1, 2, 3, 4]
    assert list(evaluated_frames(11, "cross", 3)) == [0, 5, 10]
    assert list(evaluated_frames(11, "self", 2)) == [1, 10] and len(evaluated_frames(1, "self", 4)) == 0


@pytest.mark.filterwarnings("ignore:FID. singular")
def test_fid_through_the_span_of_a_small_set_equals_pytorch_fids_route():
    rng = np.random.default_rng(0)
    for small, large in ((5, 30), (30, 5), (7, 7)):
        features, references = rng.normal(size=(small, 8)), rng.normal(size=(large, 8)) * 1.5 + 0.3
        fid, route = fid_of_features(features, references, "auto")
        reference, reference_route = fid_of_features(features, references)
        assert route == "span" and reference_route == "pytorch-fid"
        # pytorch-fid adds its 1e-6 ridge to the singular covariances, which moves its value by about 1e-8
        assert fid == pytest.approx(reference, rel=1e-6)
    many, others = rng.normal(size=(40, 8)), rng.normal(size=(50, 8))
    fid, route = fid_of_features(many, others, "auto")  # more features than dimensions: pytorch-fid's own route
    assert route == "pytorch-fid" and fid == pytest.approx(frechet_distance(
        many.mean(0), np.cov(many, rowvar=False), others.mean(0), np.cov(others, rowvar=False)), rel=1e-12)


@pytest.mark.slow
def test_truth_rows_must_cover_every_clip_of_the_split(world, tmp_path):
    truth = pd.read_parquet(world / "world" / "truth.parquet")
    params = read_truth(world / "world" / "truth.parquet")
    assert len(params) == 3 and all(table.shape[1] == len(PARAM_NAMES) for table in params.values())
    partial = tmp_path / "truth.parquet"
    truth[truth["identity"] != truth["identity"].iloc[0]].to_parquet(partial)
    with pytest.raises(ValueError, match="has no rows for 1 clips"):
        check_request(config_for(world, tmp_path / "out", truth=str(partial)))
    short = tmp_path / "short.parquet"
    truth[truth["frame"] > 0].to_parquet(short)
    with pytest.raises(ValueError, match="another frame rate"):
        check_request(config_for(world, tmp_path / "out", truth=str(short)))


# --- the command line ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_refuses_a_missing_store_and_an_unknown_identity_in_one_line(world, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "run preprocess-dataset first" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["evaluate", "--store", str(world / "s.zarr"), "--out", str(tmp_path / "o"),
                                 "--identity", "id99999", "--weights", "demo"])
    assert result.exit_code == 2 and "identities not in the store" in result.output and "id99999" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_cli_help_explains_the_protocols_and_the_outputs():
    result = CliRunner().invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    for words in ("--protocol", "'cross' (random pairs of two identities)", "--truth", "truth.parquet",
                  "--frames-per-clip", "--identity", "summary.json", "names the network"):
        assert words in text, words


# --- several weights sets --------------------------------------------------------------------------------------------

def test_weights_choices_name_each_set_and_its_weights_directory():
    from storage.weights import UnknownWeightsError
    from tasks.evaluate import weights_choices

    assert weights_choices(["demo", "joint=demo-joint@runs/j/weights", "again=demo"], "w") == {
        "demo": ("demo", "w"), "joint": ("demo-joint", "runs/j/weights"), "again": ("demo", "w")}
    with pytest.raises(ValueError, match="'demo' twice; give each set its own label"):
        weights_choices(["demo", "demo@elsewhere"])
    with pytest.raises(ValueError, match="names a folder"):
        weights_choices(["../up=demo"])
    with pytest.raises(UnknownWeightsError, match="no weights set named 'nope'"):
        weights_choices(["x=nope"])


@pytest.mark.slow
def test_several_sets_are_evaluated_on_the_same_pairs_and_reported_side_by_side(world, tmp_path):
    """Two labels for the same networks (the tiny demo set): two complete evaluations of the same pairs with the
    same figures, sets.json last, and the report's table of the sets; without LPIPS it is not measured; the pixel
    and inversion errors are measured as documented."""
    from flows.benchmark_report import benchmark_report
    from tasks.report import ReportConfig, load_evaluation, set_comparison

    out = tmp_path / "sets"
    result = CliRunner().invoke(app, [
        "evaluate", "--store", str(world / "s.zarr"), "--out", str(out), "--truth", str(world / "world/truth.parquet"),
        "--max-clips", "0", "--cross-count", "2", "--frames-per-clip", "2", "--no-fid", "--no-linearity", "--no-lpips",
        "--samples", "1", "--embedder", "dlib", "--device", "cpu", "--weights-dir", str(world / "weights"),
        "--weights", "demo", "--compare", f"again=demo@{world / 'weights'}"])
    assert result.exit_code == 0, result.output
    assert "set demo:" in result.output and "set again:" in result.output
    assert [entry.label for entry in EvaluationSets.read(out).sets] == ["demo", "again"]
    first, second = (pd.read_parquet(out / label / "frames.parquet") for label in ("demo", "again"))
    assert first.equals(second)  # the same pairs, the same networks: the same figures
    self_frames, cross = first[first["protocol"] == "self"], first[first["protocol"] == "cross"]
    assert self_frames["lpips"].isna().all()  # not measured
    assert EvaluationSummary.read(out / "demo").networks.lpips is None
    assert (self_frames["pixel"] > 0).all() and (self_frames["pixel"] <= 255).all() and cross["pixel"].isna().all()
    assert np.isfinite(first["inversion"]).all() and np.isfinite(self_frames["static_pixel"]).all()
    for _pair, rows in first.groupby("pair"):
        assert rows["inversion"].nunique() == 1  # one value per source

    loaded = load_evaluation(out)
    assert list(loaded.sets) == ["demo", "again"] and loaded.root == out / "demo"
    table = set_comparison(loaded, ReportConfig(resamples=200))
    assert {"demo", "again", "doing nothing (Δp = 0)", "the driver itself"} == set(table["set"])
    means = table.set_index(["protocol", "set", "metric"])["mean"]
    assert means[("self", "demo", "pixel")] == pytest.approx(self_frames["pixel"].mean())
    assert means[("self", "doing nothing (Δp = 0)", "pixel")] == pytest.approx(self_frames["static_pixel"].mean())
    assert means[("cross", "again", "csim")] == means[("cross", "demo", "csim")] > 0
    assert means[("cross", "the driver itself", "truth_apd")] == pytest.approx(cross["driving_truth_apd"].mean())
    page = Path(benchmark_report(evaluation=str(out), config=ReportConfig(resamples=200)).report).read_text()
    assert "Weights sets compared" in page and "doing nothing (Δp = 0)" in page and "inversion error" in page

    # the headline tables: every metric beside its baselines; what --no-fid and --no-lpips left empty says so
    text = re.sub(r"data:image/[a-z]+;base64,[^\"]*", "", page)
    headline = re.findall(r'<table class="numbers headline">.*?</table>', text, re.S)
    assert len(headline) == 2  # self, cross
    for table in headline:
        assert "<th>mean</th><th>doing nothing (Δp = 0)</th><th>the driver itself</th>" in table
    cells = re.findall(r"<td>(.*?)</td>", re.search(r"<tr><td>APD vs truth</td>.*?</tr>", headline[1]).group(0))
    static = cross["static_truth_apd"].mean()  # the tiny G's noise: the Net3D (almost) never reads a face in it
    assert cells[3].startswith(f"{static:.4g}") if np.isfinite(static) else \
        cells[3] == "not measured (the Net3D found no face)"
    assert cells[4].startswith(f"{cross['driving_truth_apd'].mean():.4g} [")  # the real synthetic faces are read
    assert "<td>LPIPS</td><td>lower</td><td>not measured (--no-lpips)</td>" in headline[0]
    assert text.count("<td>not measured (--no-fid)</td>") == 6  # FID and KID of both protocols; FID by the papers
    assert "None" not in text and "subsets of —" not in text
