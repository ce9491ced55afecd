"""The metric computations over batches: hand cases (identical images give CSIM 1, LPIPS 0, APD 0; a known rotation
gives a known APD), the synthetic world's known poses read back by the shipped regressor, the linearity analysis on
a world whose directions are known (and on a real StyleGAN2 of random weights), and loading the metric networks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models import MissingWeightsError
from models.directions import NUM_PARAMS, PARAM_NAMES, DirectionMatrix, FaceParams, ParamRanges
from models.identity import build_identity
from models.images import to_signed
from models.stylegan2 import Generator, Synthesis
from models.synth.head import EXPRESSION_NAMES, sample_identity
from models.synth.render import render, render_with_landmarks
from storage import networks as registry_networks
from storage.weights import WEIGHT_FILES, WeightsRegistry
from tasks.metrics import (
    MetricNetworks,
    MetricsConfig,
    csim,
    distribution_scores,
    expression_distance,
    fit_linearity,
    identity_retrieval,
    inception_features,
    lpips,
    pose_distance,
    sweep_directions,
)
from training.face3d_regressor import EXPRESSION_RANGES, JAW_RANGE


def synthetic_ranges() -> ParamRanges:
    """The synthetic world's own table: the ranges its clips give jaw and expressions."""
    table = np.full((54, 2), np.nan)
    table[:3] = [[-40, 40], [-20, 20], [-20, 20]]
    table[3] = JAW_RANGE
    table[4:NUM_PARAMS] = [EXPRESSION_RANGES[name] for name in EXPRESSION_NAMES]
    return ParamRanges(table)


def params_at(poses: list[tuple[float, float, float]], jaw: float = 0.1) -> np.ndarray:
    params = np.zeros((len(poses), NUM_PARAMS), np.float32)
    params[:, :3] = poses
    params[:, 3] = jaw
    return params


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Two synthetic people, frontal: uint8 [2, 256, 256, 3]."""
    return np.concatenate([render(sample_identity(seed), params_at([(0, 0, 0)])) for seed in (1, 2)])


ALEXNET_FILE = WEIGHT_FILES["lpips-alexnet"].filename


@pytest.fixture(scope="module")
def regressor():
    return registry_networks.face3d_backend(WeightsRegistry(), "synth-regressor")


# --- CSIM, LPIPS, FID / KID ---------------------------------------------------------------------------------------------

def test_csim_of_identical_images_is_one_and_carries_the_embedder_name(faces):
    embedder = build_identity("dlib")
    scores = csim(embedder, faces[[0, 1, 0]], faces[[0, 1, 1]], batch_size=2)  # two batches
    assert scores.network == "dlib" and scores.metric == "csim" and list(scores.table.columns) == ["csim"]
    values = scores.table["csim"].to_numpy()
    np.testing.assert_allclose(values[:2], 1.0, atol=1e-6)
    assert values[2] < 0.99  # two different people
    assert scores.summary()["network"] == "dlib" and scores.summary()["pairs"] == 3


def test_identity_retrieval_gives_each_face_to_its_own_person(faces):
    embedder = build_identity("dlib")
    gallery = np.concatenate([faces, render(sample_identity(3), params_at([(0, 0, 0)]))])  # three people, frontal
    turned = np.concatenate([render(sample_identity(seed), params_at([(12, 4, 0), (-10, 0, 3)])) for seed in (1, 2)])
    own = identity_retrieval(embedder, turned[:2], gallery, own=0, batch_size=1)  # person 1 among the three
    other = identity_retrieval(embedder, turned[2:], gallery, own=0)  # person 2's faces are not person 1's
    assert own.metric == "identity_retrieval" and own.network == "dlib"
    assert own.table["identity_retrieval"].tolist() == [1.0, 1.0]
    assert other.table["identity_retrieval"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="gallery of 3"):
        identity_retrieval(embedder, turned, gallery, own=3)


def test_lpips_scores_of_pixels_equal_the_network_on_signed_images(faces):
    network = registry_networks.lpips(WeightsRegistry(), random_backbone=True)
    noisy = np.clip(faces.astype(int) + np.random.default_rng(0).integers(-20, 21, faces.shape), 0, 255).astype(np.uint8)
    scores = lpips(network, np.concatenate([faces, noisy]), np.concatenate([faces, faces]), batch_size=3)
    values = scores.table["lpips"].to_numpy()
    assert scores.network == "lpips-alex-v0.1-random-backbone" and values.shape == (4,)
    assert np.abs(values[:2]).max() == 0.0 and (values[2:] > 0).all()
    with torch.no_grad():
        direct = network(to_signed(noisy), to_signed(faces)).numpy()
    np.testing.assert_allclose(values[2:], direct, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 6 images in 64 dimensions
def test_fid_and_kid_of_a_set_with_itself_and_with_another():
    network = registry_networks.fid_inception(WeightsRegistry(), random_weights=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    features = inception_features(network, images, batch_size=4)
    assert features.shape == (6, 2048) and features.dtype == np.float32
    with torch.no_grad():
        direct = network(torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(features[:2], direct, rtol=1e-5, atol=1e-6)
    # FID's matrix square root of 2048 x 2048 takes tens of seconds on 2 cores: the arithmetic on 64 of the features
    features = features[:, :64]
    same = distribution_scores(features, features, network.name, kid_subsets=5)
    assert same.network == "fid-inception-2015-12-05-random-weights"
    assert abs(same.fid) < 1e-6 and (same.images, same.references, same.kid_subset_size) == (6, 6, 6)
    other = distribution_scores(features, features + 1.0, network.name, kid_subsets=5)
    # shifted by 1 in all 64 dimensions: the covariances are equal, so FID is |Δμ|² = 64
    assert other.fid == pytest.approx(64.0, rel=1e-6) and other.kid > same.kid


# --- APD and AED -----------------------------------------------------------------------------------------------------

def test_identical_parameters_give_zero_apd_and_aed():
    params = np.random.default_rng(2).normal(size=(5, NUM_PARAMS + 6))  # shape coefficients after the 15 are ignored
    apd = pose_distance(params, params, backend="deca")
    aed = expression_distance(params, params, ParamRanges.load(), backend="deca")
    assert apd.network == aed.network == "deca"
    assert (apd.table.to_numpy() == 0).all() and (aed.table.to_numpy() == 0).all()


def test_a_known_rotation_gives_a_known_apd():
    params = np.random.default_rng(3).normal(size=(4, NUM_PARAMS)) * 10
    turned = params.copy()
    turned[:, 0] += 10.0  # yaw +10 degrees on every frame
    turned[:, 2] -= 4.0  # roll -4 degrees
    found = np.array([True, True, False, True])
    scores = pose_distance(turned, params, backend="synth-regressor", found=found)
    summary = scores.summary()
    assert list(scores.table.columns) == ["apd_yaw", "apd_pitch", "apd_roll", "apd"]
    assert scores.table.loc[2].isna().all() and summary["pairs"] == 3
    assert summary["apd_yaw"] == pytest.approx(10.0) and summary["apd_pitch"] == pytest.approx(0.0)
    assert summary["apd_roll"] == pytest.approx(4.0) and summary["apd"] == pytest.approx(14.0 / 3)


def test_aed_normalises_by_the_ranges_table():
    ranges = synthetic_ranges()
    params = np.zeros((2, NUM_PARAMS))
    changed = params.copy()
    changed[:, 3] += 0.035  # a tenth of the jaw's [0, 0.35]
    changed[1, 4] += 0.75  # half of smile's [-0.5, 1.0], in the second pair only
    scores = expression_distance(changed, params, ranges, backend="synth-regressor")
    np.testing.assert_allclose(scores.table["aed_jaw"], [0.1, 0.1])
    np.testing.assert_allclose(scores.table["aed_exp_00"], [0.0, 0.5])
    np.testing.assert_allclose(scores.table["aed"], [0.1 / 12, 0.6 / 12])
    assert len(scores.table.columns) == 13 and not any(name.startswith("aed_yaw") for name in scores.table.columns)


def test_apd_of_rendered_heads_at_known_poses(regressor):
    """Heads rendered at poses and again turned 10° in yaw, read back by the shipped regressor (dlib finds the
    landmarks): the APD in yaw is the 10° that was rendered, up to the regressor's error (about 1°)."""
    identity = sample_identity(4)
    poses = [(-12.0, 5.0, 2.0), (0.0, -6.0, -3.0), (8.0, 3.0, 4.0)]
    turned = [(yaw + 10, pitch, roll) for yaw, pitch, roll in poses]
    frames, _ = render_with_landmarks(identity, params_at(poses + turned))
    estimate = regressor.estimate(frames)
    assert estimate.found.all()
    values = estimate.to_array()
    summary = pose_distance(values[3:], values[:3], backend=regressor.name).summary()
    assert summary["network"] == "synth-regressor"
    assert summary["apd_yaw"] == pytest.approx(10.0, abs=1.5)
    assert summary["apd_pitch"] < 1.5 and summary["apd_roll"] < 1.5


# --- linearity ------------------------------------------------------------------------------------------------------

def hand_sweep(rows: list[tuple[str, float, int, bool, dict[str, float]]]) -> pd.DataFrame:
    """A sweep table in `sweep_directions`' layout from (direction, magnitude, source, found, {param: response})."""
    return pd.DataFrame([{"direction": d, "magnitude": m, "source": s, "found": f,
                          **{f"d_{p}": response.get(p, 0.0) for p in PARAM_NAMES}} for d, m, s, f, response in rows])


def test_linear_fit_and_crosstalk_of_a_hand_made_response():
    magnitudes = (-4.0, -2.0, 0.0, 2.0, 4.0)
    rows = [("yaw", m, 0, True, {"yaw": 2 * m + 0.5, "pitch": 0.3 * abs(m)}) for m in magnitudes]
    rows.append(("yaw", 4.0, 1, False, {"yaw": 100.0, "pitch": 100.0}))  # a face the Net3D missed: left out
    noise = np.array([0.3, -0.2, 0.1, -0.4, 0.2])
    rows += [("jaw", m, 0, True, {"jaw": m + e, "exp_03": -0.1 * m}) for m, e in zip(magnitudes, noise)]
    fits = fit_linearity(hand_sweep(rows)).set_index("direction")

    yaw = fits.loc["yaw"]
    assert (yaw.slope, yaw.intercept, yaw.r2, yaw.points) == (pytest.approx(2.0), pytest.approx(0.5),
                                                               pytest.approx(1.0), 5)
    assert yaw.crosstalk_pitch == pytest.approx(0.3) and yaw.crosstalk_max_param == "pitch"
    assert yaw.crosstalk == pytest.approx(0.3 / 14) and np.isnan(yaw.crosstalk_yaw) and yaw.crosstalk_roll == 0

    jaw = fits.loc["jaw"]
    m = np.array(magnitudes)
    slope, intercept = np.polyfit(m, m + noise, 1)
    residual = m + noise - (slope * m + intercept)
    r2 = 1 - (residual ** 2).sum() / ((m + noise - (m + noise).mean()) ** 2).sum()
    assert (jaw.slope, jaw.intercept, jaw.r2) == (pytest.approx(slope), pytest.approx(intercept), pytest.approx(r2))
    assert jaw.r2 < 1 and jaw.crosstalk_exp_03 == pytest.approx(0.1) and jaw.crosstalk_max_param == "exp_03"


class RenderingGenerator(torch.nn.Module):
    """A stand-in for G with a known answer: W+ layer 0 holds the 15 face parameters in shift units, and the
    synthetic head is rendered with them. Shifting that layer by Δp moves the face by exactly Δp."""

    def __init__(self, seed: int, ranges: ParamRanges):
        super().__init__()
        self.identity, self.ranges = sample_identity(seed), ranges

    def synthesis(self, wplus: torch.Tensor) -> Synthesis:
        params = self.ranges.from_shift_space(wplus[:, 0, :NUM_PARAMS].double()).to_vector().numpy()
        return Synthesis(to_signed(render(self.identity, params)), {})


@pytest.mark.slow
def test_linearity_recovers_known_directions_through_the_renderer_and_the_regressor(regressor):
    ranges = synthetic_ranges()
    directions = DirectionMatrix(shift_dim=NUM_PARAMS, input_dim=NUM_PARAMS, num_layers=1)
    with torch.no_grad():  # each direction moves its own parameter one for one; yaw also drags pitch by half
        directions.linear.weight.copy_(torch.eye(NUM_PARAMS))
        directions.linear.weight[PARAM_NAMES.index("pitch"), PARAM_NAMES.index("yaw")] = 0.5
        directions.linear.bias.zero_()
    sources = params_at([(5.0, -3.0, 2.0), (-8.0, 4.0, -1.0)])
    sources[1, 4] = 0.2
    shift = ranges.to_shift_space(FaceParams.from_vector(torch.from_numpy(sources))).float()
    wplus = torch.stack([shift, torch.zeros_like(shift)], dim=1)  # [2, 2, 15]
    sweep = sweep_directions(RenderingGenerator(5, ranges), directions, regressor, wplus, ranges,
                             magnitudes=(-3.0, -1.5, 0.0, 1.5, 3.0), which=("yaw", "jaw", "exp_00"), batch_size=8)
    assert len(sweep) == 3 * 5 * 2 and sweep["found"].all()
    fits = fit_linearity(sweep).set_index("direction")
    # measured with this head: slopes 0.97, 0.88, 0.93; R² 0.998, 0.957, 0.995; yaw's pitch cross-talk 0.49, the
    # others' 0.08, 0.05 (over four heads: slopes 0.87-1.08, |intercepts| <= 0.30, R² >= 0.95, yaw -> pitch
    # 0.49-0.55, the others' pitch <= 0.10; the jaw is the regressor's noisiest reading, 0.018 rad = 0.6 units)
    for name in ("yaw", "jaw", "exp_00"):
        assert fits.loc[name, "slope"] == pytest.approx(1.0, abs=0.15)
        assert abs(fits.loc[name, "intercept"]) < 0.35 and fits.loc[name, "r2"] > 0.94
    assert fits.loc["yaw", "crosstalk_pitch"] == pytest.approx(0.5, abs=0.07)
    assert fits.loc["jaw", "crosstalk_pitch"] < 0.15 and fits.loc["exp_00", "crosstalk_pitch"] < 0.15


def test_linearity_sweep_with_a_stylegan2_generator():
    """The real G and A (random weights, 32 px): batches that split the sources still pair every shifted image
    with its own source, so with A's bias at zero a zero request moves nothing at all."""
    torch.manual_seed(0)
    generator = Generator(size=32, style_dim=16, n_mlp=1, channel_multiplier=1).eval()
    directions = DirectionMatrix(shift_dim=16, num_layers=4)
    with torch.no_grad():
        directions.linear.bias.zero_()
        directions.linear.weight.mul_(30)  # visible changes from a random G
    wplus = generator.wplus_from_styles([torch.randn(2, 16)])
    _, landmarks = render_with_landmarks(sample_identity(6), params_at([(0, 0, 0)]))
    face3d = registry_networks.face3d_backend(WeightsRegistry(), "synth-regressor")
    sweep = sweep_directions(generator, directions, face3d, wplus, ParamRanges.load(), magnitudes=(0.0, 6.0),
                             which=("yaw", "exp_00"), batch_size=3, landmarks=landmarks[0] * 32 / 256)
    assert len(sweep) == 2 * 2 * 2 and sweep["found"].all()
    responses = sweep[[f"d_{name}" for name in PARAM_NAMES]].to_numpy()
    still = (sweep["magnitude"] == 0).to_numpy()
    assert (responses[still] == 0).all()
    assert (np.abs(responses[~still]).max(axis=1) > 1e-3).all()
    fits = fit_linearity(sweep)
    assert list(fits["direction"]) == ["yaw", "exp_00"] and fits["slope"].notna().all()
    with pytest.raises(ValueError, match="unknown directions"):
        sweep_directions(generator, directions, face3d, wplus, ParamRanges.load(), which=("nod",))


# --- loading the networks -------------------------------------------------------------------------------------------

def test_metric_networks_load_from_the_weights_directory_or_say_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    weights = tmp_path / "weights"
    weights.mkdir()
    networks = MetricNetworks(MetricsConfig(weights_dir=str(weights), device="cpu"))
    assert networks.identity.name == "dlib"  # no ArcFace weights: the offline embedder, under its own name
    with pytest.raises(MissingWeightsError) as caught:
        _ = networks.lpips
    assert str(weights / ALEXNET_FILE) in str(caught.value) and "torch-home" in str(caught.value)
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        _ = networks.inception

    trunk = {name: value for name, value in registry_networks.lpips(WeightsRegistry(weights), random_backbone=True)
             .state_dict().items() if name.startswith("features.")}
    torch.save(trunk, weights / ALEXNET_FILE)
    network = MetricNetworks(MetricsConfig(weights_dir=str(weights), device="cpu")).lpips
    assert network.name == "lpips-alex-v0.1"
    torch.testing.assert_close(network.features[3].weight, trunk["features.3.weight"], rtol=0, atol=0)
    assert (weights / ".cache" / "lpips-alexnet.safetensors").is_file()  # read through the registry's cache
