"""Metric networks and arithmetic: LPIPS against the lpips package, the FID Inception against pytorch-fid (same
random weights, the official state-dict layout both ways), the Fréchet distance against closed forms and
pytorch-fid, KID against a hand computation, torch-fidelity and clean-fid, the streaming statistics against numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from models import MissingWeightsError
from models.metrics.fid import FeatureStatistics, fid_from_statistics, frechet_distance, kernel_inception_distance
from models.metrics.inception import FIDInception, build_fid_inception
from models.metrics.lpips import LPIPS, build_lpips
from storage.networks import fid_inception, lpips
from storage.weights import WEIGHT_FILES, WeightsRegistry
from tests.references import reference

ALEXNET_FILE, FID_INCEPTION_FILE = WEIGHT_FILES["lpips-alexnet"].filename, WEIGHT_FILES["fid-inception"].filename


def heads_state() -> dict[str, torch.Tensor]:
    """The v0.1 heads that ship inside the installed lpips package, read by the weights registry."""
    return WeightsRegistry().load_state("lpips-heads").state


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty $TORCH_HOME, so no test sees (or writes) the user's hub cache."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def no_downloads(monkeypatch):
    """Fail any attempt of torch hub to fetch a file."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


# --- LPIPS ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_lpips():
    """The lpips package's LPIPS: the shipped v0.1 heads, a random trunk (nothing to download)."""
    lpips = reference("lpips")
    torch.manual_seed(0)
    return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()


def torchvision_alexnet_state(reference) -> dict[str, torch.Tensor]:
    """The reference's trunk in torchvision's AlexNet layout (its slices keep torchvision's indices), with a
    classifier as the ImageNet file has one."""
    import torchvision

    state = {f"features.{name.split('.', 2)[2]}": value.clone()
             for name, value in reference.state_dict().items() if name.startswith("net.slice")}
    classifier = {name: value for name, value in torchvision.models.alexnet(weights=None).state_dict().items()
                  if name.startswith("classifier.")}
    return {**state, **classifier}


def test_lpips_matches_the_lpips_package(reference_lpips, tmp_path, torch_home, no_downloads):
    torch.save(torchvision_alexnet_state(reference_lpips), tmp_path / ALEXNET_FILE)
    ours = lpips(WeightsRegistry(tmp_path))  # strict load of the torchvision file and of the shipped heads
    assert ours.name == "lpips-alex-v0.1"
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(4, 3, 96, 80, generator=generator) * 2 - 1
    b = torch.rand(4, 3, 96, 80, generator=generator) * 2 - 1
    with torch.no_grad():
        expected = reference_lpips(a, b).flatten()
        got = ours(a, b)
    assert got.shape == (4,) and (expected > 0.01).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # measured: bit-identical (max |diff| 0.0)


def test_lpips_heads_are_the_shipped_file():
    network = LPIPS()
    shipped = heads_state()
    network.load_heads(shipped)
    for name, value in shipped.items():
        torch.testing.assert_close(network.state_dict()[name], value, rtol=0, atol=0)
    # the state dict is exactly the heads file plus torchvision's features: the scaling constants are not in it
    assert {n for n in network.state_dict() if not n.startswith("features.")} == set(shipped)


def test_lpips_identical_images_are_at_zero_and_the_distance_is_symmetric():
    network = build_lpips(heads_state(), random_backbone=True)
    assert network.name.endswith("random-backbone")
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        same = network(images, images)
        forward, backward = network(images, images.flip(0)), network(images.flip(0), images)
    assert same.abs().max().item() == 0.0
    torch.testing.assert_close(forward, backward)
    assert forward[0] > 0 and forward[1] == 0  # the middle image is paired with itself


def test_lpips_without_the_trunk_names_both_places(tmp_path, torch_home, no_downloads):
    with pytest.raises(MissingWeightsError) as caught:
        lpips(WeightsRegistry(tmp_path))
    message = str(caught.value)
    assert str(tmp_path / ALEXNET_FILE) in message
    assert str(torch_home / "hub" / "checkpoints" / ALEXNET_FILE) in message


def test_lpips_trunk_from_torch_hub_folder(reference_lpips, tmp_path, torch_home, no_downloads):
    hub_file = WeightsRegistry(tmp_path).candidates("lpips-alexnet")[-1]
    assert hub_file == torch_home / "hub" / "checkpoints" / ALEXNET_FILE
    hub_file.parent.mkdir(parents=True)
    state = torchvision_alexnet_state(reference_lpips)
    torch.save(state, hub_file)
    network = lpips(WeightsRegistry(tmp_path))  # nothing in the weights dir: the hub's copy is used
    torch.testing.assert_close(network.features[0].weight, state["features.0.weight"], rtol=0, atol=0)


def test_lpips_refuses_a_state_dict_that_is_not_alexnet():
    network = LPIPS()
    with pytest.raises(KeyError, match="not an AlexNet"):
        network.load_backbone({"layer1.0.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key"):
        network.load_backbone({"features.0.weight": network.features[0].weight})


# --- the FID Inception -------------------------------------------------------------------------------------------------

def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every entry of the official layout filled at random with scales that keep activations about unit size
    through 90 layers (He-normal convolutions; batch norms near identity), so features differ between images."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in FIDInception().state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(value)
        elif name.endswith("conv.weight"):
            fan_in = value[0].numel()
            state[name] = torch.randn(value.shape, generator=generator) * (2 / fan_in) ** 0.5
        elif name.endswith(("bn.weight", "running_var")):
            state[name] = 0.8 + 0.4 * torch.rand(value.shape, generator=generator)
        else:  # bn.bias, running_mean, fc
            state[name] = 0.1 * torch.randn(value.shape, generator=generator)
    return state


@pytest.fixture(scope="module")
def inception_state():
    return random_inception_state()


def pytorch_fid_inception(monkeypatch, state):
    """pytorch-fid's `InceptionV3([3])`, its weights 'download' answered with `state` (loaded strictly there)."""
    inception = reference("pytorch_fid.inception")
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda url, **kwargs: dict(state))
    return inception.InceptionV3([3], use_fid_inception=True).eval()


def test_fid_inception_matches_pytorch_fid(monkeypatch, inception_state):
    reference = pytorch_fid_inception(monkeypatch, inception_state)  # our names load strictly into theirs
    ours = build_fid_inception(state=inception_state)  # and back
    images = torch.rand(3, 3, 128, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(images)[0].flatten(1)
        got = ours(images)
    assert got.shape == (3, 2048) and expected.std() > 0.1  # features of unit size, not vanishing
    assert (got[0] - got[1]).abs().max() > 0.1  # and different per image
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)  # measured: bit-identical (max |diff| 0.0)


def test_fid_inception_loads_files_with_and_without_batch_norm_counters(tmp_path, torch_home, inception_state):
    without = {name: value for name, value in inception_state.items() if not name.endswith("num_batches_tracked")}
    torch.save(without, tmp_path / FID_INCEPTION_FILE)
    network = fid_inception(WeightsRegistry(tmp_path))
    torch.testing.assert_close(network.fc.weight, inception_state["fc.weight"], rtol=0, atol=0)
    build_fid_inception(state=inception_state)  # with them
    with pytest.raises(RuntimeError, match="Missing key"):
        build_fid_inception(state={name: value for name, value in without.items() if name != "fc.bias"})


def test_fid_inception_without_the_file_names_both_places(tmp_path, torch_home, no_downloads):
    with pytest.raises(MissingWeightsError) as caught:
        fid_inception(WeightsRegistry(tmp_path))
    assert str(tmp_path / FID_INCEPTION_FILE) in str(caught.value)
    assert str(torch_home / "hub" / "checkpoints" / FID_INCEPTION_FILE) in str(caught.value)


# --- Fréchet distance ----------------------------------------------------------------------------------------------

def random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_of_gaussians_with_known_moments():
    # diagonal: |(1, 2)|^2 + (1 + 4 + 4 + 9) - 2 (2 + 6) = 5 + 18 - 16
    assert frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0])) \
        == pytest.approx(7.0, abs=1e-10)
    # covariances sharing eigenvectors Q: |mu1 - mu2|^2 + sum (sqrt(d1) - sqrt(d2))^2, whatever Q is
    q = random_rotation(6, seed=4)
    d1, d2 = np.array([0.5, 1, 2, 3, 4, 5.0]), np.array([2, 1, 0.5, 3, 1, 0.25])
    mu1, mu2 = np.arange(6.0), np.arange(6.0)[::-1] * 0.5
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    got = frechet_distance(mu1, q @ np.diag(d1) @ q.T, mu2, q @ np.diag(d2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_identical_features_have_zero_fid():
    features = np.random.default_rng(5).normal(size=(400, 16))
    stats = FeatureStatistics(16).update(features)
    assert fid_from_statistics(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(6)
    q = random_rotation(4, seed=7)
    d1, d2 = np.array([1.0, 2, 3, 4]), np.array([4.0, 1, 1, 2])
    a = rng.normal(size=(20000, 4)) * np.sqrt(d1) @ q.T
    b = rng.normal(size=(20000, 4)) * np.sqrt(d2) @ q.T + 1.0
    expected = 4.0 + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()  # 4 + 1 + 0.172 + 0.536 + 0.343
    got = fid_from_statistics(FeatureStatistics(4).update(a), FeatureStatistics(4).update(b))
    assert got == pytest.approx(expected, rel=0.03)


def test_frechet_distance_matches_pytorch_fid_also_for_singular_covariances():
    fid_score = reference("pytorch_fid.fid_score")
    rng = np.random.default_rng(8)
    for count, dim in ((500, 32), (6, 12)):  # the second: fewer samples than dimensions, singular covariances
        a, b = rng.normal(size=(count, dim)), rng.normal(size=(count, dim)) * 1.3 + 0.2
        mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
        with warnings.catch_warnings():  # pytorch-fid passes sqrtm's `disp`, deprecated since scipy 1.16
            warnings.simplefilter("ignore", DeprecationWarning)
            expected = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_streaming_statistics_equal_numpy_on_all_features_at_once():
    features = np.random.default_rng(9).normal(loc=3.0, size=(257, 8)).astype(np.float32)
    stats = FeatureStatistics(8)
    for start in range(0, 257, 50):
        stats.update(features[start:start + 50])
    merged = FeatureStatistics(8).update(features[:100]).merge(FeatureStatistics(8).update(torch.from_numpy(features[100:])))
    for result in (stats, merged):
        assert result.count == 257
        np.testing.assert_allclose(result.mean, features.astype(np.float64).mean(0), rtol=1e-12)
        np.testing.assert_allclose(result.covariance, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStatistics(8).update(features[:1]).covariance


# --- KID -------------------------------------------------------------------------------------------------------------

def test_kid_by_hand():
    # X = {0, 1}, Y = {1, 2}, d = 1, k = (xy + 1)^3: off-diagonal k_xx 1 + 1, k_yy 27 + 27 -> 56 / 2 = 28;
    # k_xy 1 + 1 + 8 + 27 = 37 -> 2 * 37 / 4 = 18.5; MMD^2 = 9.5 for every subset (each is the whole set)
    kid = kernel_inception_distance(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]), subsets=3)
    assert (kid.mean, kid.std, kid.subset_size) == (pytest.approx(9.5), pytest.approx(0.0), 2)


def test_kid_matches_torch_fidelity():
    metric_kid = reference("torch_fidelity.metric_kid")
    rng = np.random.default_rng(10)
    a, b = rng.random((300, 64)), rng.random((250, 64)) * 1.1
    expected = metric_kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20, kid_subset_size=100, rng_seed=2020, verbose=False)
    got = kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=2020)
    assert got.mean == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-9)
    assert got.std == pytest.approx(expected["kernel_inception_distance_std"], rel=1e-9)
    assert got.mean > 0


def test_kid_matches_clean_fid_when_subsets_are_the_whole_sets():
    cleanfid = reference("cleanfid.fid")
    rng = np.random.default_rng(11)
    a, b = rng.random((120, 32)), rng.random((120, 32)) + 0.05
    expected = cleanfid.kernel_distance(a, b, num_subsets=3, max_subset_size=1000)  # its own random draws
    got = kernel_inception_distance(a, b, subsets=3)  # subsets of 120: any draw is the whole set
    assert got.subset_size == 120 and got.mean == pytest.approx(expected, rel=1e-9)


def test_kid_is_the_same_with_gram_matrices_computed_once_or_per_subset(monkeypatch):
    import models.metrics.fid as fid

    rng = np.random.default_rng(12)
    a, b = rng.random((80, 16)), rng.random((90, 16))
    once = kernel_inception_distance(a, b, subsets=5, subset_size=40)
    monkeypatch.setattr(fid, "FULL_GRAM_LIMIT", 0)
    per_subset = kernel_inception_distance(a, b, subsets=5, subset_size=40)
    assert once.mean == pytest.approx(per_subset.mean, rel=1e-9) and once.std == pytest.approx(per_subset.std, rel=1e-9)
