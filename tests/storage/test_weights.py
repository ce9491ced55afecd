import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from storage import checkpoints
from storage.checkpoints import (
    CheckpointKeysError,
    UnsafeCheckpointError,
    load_safetensors,
    save_safetensors,
)
from storage.weights import (
    BUNDLED_DIR,
    WEIGHT_FILES,
    WEIGHT_SETS,
    MissingWeightsError,
    UnknownWeightsError,
    WeightsRegistry,
    build,
    format_status,
    resolve_weights_dir,
)
from tests.references import reference as reference_package

REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference"


@pytest.fixture
def registry(tmp_path) -> WeightsRegistry:
    return WeightsRegistry(tmp_path / "weights")


def _put(registry: WeightsRegistry, name: str, checkpoint: dict) -> Path:
    path = registry.root / WEIGHT_FILES[name].filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def _register(monkeypatch, name: str, **changes) -> None:
    monkeypatch.setitem(WEIGHT_FILES, name, dataclasses.replace(WEIGHT_FILES[name], **changes))


# a tiny network of the allow-list for the generic rules: DirectionMatrix as one linear map 3 -> 2
TINY = {"builder": "models.directions:DirectionMatrix", "config": {"shift_dim": 2, "input_dim": 3, "w_plus": False}}


def _tiny(in_features: int = 3, out_features: int = 2) -> dict:
    return {"builder": TINY["builder"], "config": {"shift_dim": out_features, "input_dim": in_features, "w_plus": False}}


def _never_unpickle(monkeypatch) -> None:
    monkeypatch.setattr(checkpoints, "load_checkpoint", lambda path: pytest.fail(f"unpickled {path} again"))


# ------------------------------------------------------------------------------------------- where files live


def test_weights_dir_explicit_then_environment_then_project(tmp_path, monkeypatch):
    monkeypatch.setenv("REENACT_WEIGHTS_DIR", str(tmp_path / "from-env"))
    assert resolve_weights_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_weights_dir() == tmp_path / "from-env"
    assert WeightsRegistry().root == (tmp_path / "from-env").resolve()
    monkeypatch.delenv("REENACT_WEIGHTS_DIR")
    assert resolve_weights_dir() == Path(__file__).resolve().parents[2] / "weights"


@pytest.mark.parametrize("name", [name for name, entry in WEIGHT_FILES.items() if not entry.bundled and not entry.package])
def test_missing_file_says_where_to_put_it_and_where_it_comes_from(registry, name):
    entry = WEIGHT_FILES[name]
    with pytest.raises(MissingWeightsError) as caught:
        registry.path(name)
    message = str(caught.value)
    assert str(registry.root / entry.filename) in message and entry.where_to_get in message
    if entry.builder:
        with pytest.raises(MissingWeightsError, match=str(registry.root / entry.filename)):
            registry.get(name)


def test_unknown_names_list_the_known_ones(registry):
    with pytest.raises(UnknownWeightsError, match="no weights named 'stylegan3'; known: stylegan2-voxceleb256"):
        registry.get("stylegan3")
    with pytest.raises(UnknownWeightsError, match="no weights set named 'ffhq'; known: voxceleb256, demo"):
        registry.status("ffhq")


def test_status_reports_present_and_missing_files(registry):
    every = registry.status()
    assert [row["name"] for row in every] == list(WEIGHT_FILES)
    shipped = [name for name, entry in WEIGHT_FILES.items() if entry.bundled or entry.package]
    assert [row["name"] for row in every if row["present"]] == shipped  # what ships with the code or its packages
    assert set(WEIGHT_SETS["demo"]) <= set(shipped)
    arcface = _put(registry, "arcface-ir-se50", {"w": torch.zeros(10)})
    (registry.root / "deca").mkdir()
    (registry.root / "deca" / "generic_model.npz").write_bytes(b"npz")  # FLAME's converted form also counts

    rows = {row["name"]: row for row in registry.status("voxceleb256")}
    assert list(rows) == list(WEIGHT_SETS["voxceleb256"])
    assert rows["arcface-ir-se50"]["present"] and rows["arcface-ir-se50"]["size"] == arcface.stat().st_size
    assert rows["arcface-ir-se50"]["path"] == str(arcface) and rows["arcface-ir-se50"]["sha256_ok"] is None
    assert rows["flame"]["present"] and rows["flame"]["path"].endswith("deca/generic_model.npz")
    assert not rows["e4e-voxceleb256"]["present"] and rows["e4e-voxceleb256"]["size"] is None
    assert registry.path("flame") == registry.root / "deca" / "generic_model.npz"

    demo = registry.status("demo")  # bundled: read from models/data while the weights directory has no copy
    assert [row["path"] for row in demo] == [str(BUNDLED_DIR / "demo" / f"{part}.safetensors")
                                             for part in ("generator", "encoder", "directions", "feature_transformer")]
    assert all(row["present"] for row in demo)

    text = format_status(list(rows.values()))
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert " present " in lines["arcface-ir-se50"] and "MiB" in lines["arcface-ir-se50"]
    assert " MISSING " in lines["e4e-voxceleb256"]
    assert f"  e4e-voxceleb256: {WEIGHT_FILES['e4e-voxceleb256'].where_to_get}" in text
    assert "  arcface-ir-se50:" not in text  # present files are not in the "where to get" list


def test_pinned_sha256_is_checked_by_status_and_on_load(registry, monkeypatch):
    path = _put(registry, "arcface-ir-se50", {"linear.weight": torch.ones(2, 3), "linear.bias": torch.ones(2)})
    _register(monkeypatch, "arcface-ir-se50", **TINY, sha256=checkpoints.sha256_file(path))
    assert registry.status()[list(WEIGHT_FILES).index("arcface-ir-se50")]["sha256_ok"] is True
    assert torch.equal(registry.get("arcface-ir-se50").linear.weight, torch.ones(2, 3))

    _register(monkeypatch, "arcface-ir-se50", **TINY, sha256="0" * 64)
    assert registry.status()[list(WEIGHT_FILES).index("arcface-ir-se50")]["sha256_ok"] is False
    with pytest.raises(checkpoints.CorruptCheckpointError, match="differs from the expected 0000"):
        registry.get("arcface-ir-se50")


# ---------------------------------------------------------------------------------- loading: the generic rules


def test_data_files_are_paths_not_networks(registry):
    with pytest.raises(ValueError, match=r"flame is a data file .* registry.path\('flame'\)"):
        registry.get("flame")


def test_wrong_top_level_keys_list_expected_and_found(registry):
    _put(registry, "e4e-voxceleb256", {"state_dict": {"w": torch.ones(1)}, "opts": {"lr": 1e-4}})
    with pytest.raises(CheckpointKeysError, match=r"e4e-voxceleb\.pt: expected top-level keys \['e'\], "
                                                  r"found \['opts', 'state_dict'\]"):
        registry.get("e4e-voxceleb256")


def test_a_state_dict_that_does_not_fit_names_what_differs(registry, monkeypatch):
    _register(monkeypatch, "arcface-ir-se50", **TINY)
    path = _put(registry, "arcface-ir-se50", {"linear.weight": torch.ones(2, 4), "extra": torch.ones(1)})
    with pytest.raises(CheckpointKeysError) as caught:
        registry.get("arcface-ir-se50")
    assert str(caught.value) == (
        f"{path} does not fit models.directions:DirectionMatrix(shift_dim=2, input_dim=3, w_plus=False): missing 1: "
        f"linear.bias; unexpected 1: extra; wrong shape 1: linear.weight (2, 4) (network: (2, 3))"
    )


def test_an_unsafe_official_file_is_refused_and_leaves_no_cache(registry, tmp_path):
    marker = tmp_path / "pwned"

    class RunsACommand:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    _put(registry, "directions-voxceleb256", {"A_matrix": {"linear.weight": torch.zeros(1)}, "w_plus": RunsACommand()})
    with pytest.raises(UnsafeCheckpointError, match=r"A_matrix\.pt refused: it names posix\.system"):
        registry.get("directions-voxceleb256")
    assert not marker.exists() and not registry.cache_path("directions-voxceleb256").exists()


def test_registry_converts_once_and_follows_a_replaced_file(registry, monkeypatch):
    _register(monkeypatch, "arcface-ir-se50", **TINY)
    _put(registry, "arcface-ir-se50", {"linear.weight": torch.ones(2, 3), "linear.bias": torch.zeros(2)})
    assert torch.equal(registry.get("arcface-ir-se50").linear.weight, torch.ones(2, 3))
    assert registry.cache_path("arcface-ir-se50") == registry.root / ".cache" / "arcface-ir-se50.safetensors"
    assert torch.equal(load_safetensors(registry.cache_path("arcface-ir-se50"))[0]["linear.weight"], torch.ones(2, 3))

    with monkeypatch.context() as patched:
        _never_unpickle(patched)
        assert torch.equal(registry.get("arcface-ir-se50").linear.weight, torch.ones(2, 3))

    _put(registry, "arcface-ir-se50", {"linear.weight": torch.full((2, 3), 5.0), "linear.bias": torch.zeros(2)})
    assert torch.equal(registry.get("arcface-ir-se50").linear.weight, torch.full((2, 3), 5.0))


def test_a_safetensors_file_carries_its_own_config(registry, monkeypatch):
    _register(monkeypatch, "demo-generator", **TINY)
    path = registry.root / WEIGHT_FILES["demo-generator"].filename
    save_safetensors({"linear.weight": torch.ones(4, 5), "linear.bias": torch.ones(4)}, path,
                     {"config": _tiny(5, 4)["config"], "entries": {"note": "trained"}})
    assert registry.get("demo-generator").linear.weight.shape == (4, 5)
    assert registry.load_state("demo-generator").entries == {"note": "trained"}


def test_get_returns_eval_mode_on_the_device(registry, monkeypatch):
    config = {"widths": [4], "hidden": 4, "outputs": 2}  # a Face3DRegressor: batch norms and dropout-free layers
    _register(monkeypatch, "arcface-ir-se50", builder="models.face3d.regressor:Face3DRegressor", config=config)
    _put(registry, "arcface-ir-se50", build("models.face3d.regressor:Face3DRegressor", config).state_dict())
    network = registry.get("arcface-ir-se50", device="cpu")
    assert not any(module.training for module in network.modules())
    assert all(value.device.type == "cpu" for value in network.state_dict().values())


def test_a_half_precision_file_fills_a_float32_network(registry, monkeypatch):
    _register(monkeypatch, "arcface-ir-se50", **TINY)
    _put(registry, "arcface-ir-se50", {"linear.weight": torch.ones(2, 3, dtype=torch.float16),
                                       "linear.bias": torch.zeros(2)})
    linear = registry.get("arcface-ir-se50")
    assert linear.linear.weight.dtype == torch.float32 and linear.linear.weight.requires_grad
    assert torch.equal(linear(torch.ones(1, 3)), torch.full((1, 2), 3.0))


# ----------------------------------------------------------------------------- the networks, official layouts

def _manifest(name: str) -> list[tuple[str, tuple[int, ...]]]:
    files = {"stylegan2-voxceleb256": ("stylegan2_voxceleb256_g_ema.json", None),
             "stylegan2-voxceleb256-discriminator": ("discriminator_256.json", None),
             "e4e-voxceleb256": ("e4e_voxceleb256_encoder.json", None),
             "directions-voxceleb256": ("a_matrix.json", None),
             "arcface-ir-se50": ("arcface_ir_se50.json", None),
             "deca": ("deca_encoder.json", "E_flame")}
    filename, part = files[name]
    manifest = json.loads((REFERENCE / filename).read_text())
    return [(entry[0], tuple(entry[1])) for entry in (manifest[part] if part else manifest)["state_dict"]]


def _network_module(name: str):
    return reference_package(WEIGHT_FILES[name].builder.partition(":")[0])


OFFICIAL_NETWORKS = ["stylegan2-voxceleb256", "stylegan2-voxceleb256-discriminator", "e4e-voxceleb256",
                     "directions-voxceleb256", "arcface-ir-se50", "deca"]


@pytest.mark.parametrize("name", OFFICIAL_NETWORKS)
def test_registered_configs_build_the_official_state_dict_layout(name):
    _network_module(name)
    entry = WEIGHT_FILES[name]
    with torch.device("meta"):  # names and shapes only, no memory
        network = build(entry.builder, entry.config)
    assert [(key, tuple(value.shape)) for key, value in network.state_dict().items()] == _manifest(name)


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """How to exercise one network: a config small enough for a test (None: the official one), an input, a call."""

    input_shape: tuple[int, ...]
    small_config: dict | None = None
    call: str = "plain"  # "wplus": the generator's call on W+ codes
    others: dict = dataclasses.field(default_factory=dict)  # other top-level entries of the official file
    demo: str | None = None  # the project's own entry for the same network
    batch: int = 1


SMALL_GENERATOR = {"size": 64, "style_dim": 64, "n_mlp": 2, "channel_multiplier": 1}
A_ENTRIES = {"learned_directions": 15, "shift_scale": 6.0, "w_plus": True, "num_layers_shift": 8, "shift_dim": 512}
ROUND_TRIPS = {
    "stylegan2-voxceleb256": RoundTrip(
        (10, 64), SMALL_GENERATOR, call="wplus", demo="demo-generator", batch=2,
        others={"latent_avg": torch.zeros(64), "args": argparse.Namespace(size=64)}),
    "stylegan2-voxceleb256-discriminator": RoundTrip(
        (3, 64, 64), {"size": 64, "channel_multiplier": 1}, batch=2,
        others={"g_ema": {"style.1.bias": torch.zeros(64)}}),
    "e4e-voxceleb256": RoundTrip((3, 256, 256), demo="demo-encoder", others={"latent_avg": torch.zeros(14, 512)}),
    "directions-voxceleb256": RoundTrip((15,), demo="demo-directions", others={**A_ENTRIES, "step": 120000}),
    "arcface-ir-se50": RoundTrip((3, 112, 112)),
    "deca": RoundTrip((3, 224, 224), others={"E_detail": {}, "D_detail": {}}),
}


def _run(network: torch.nn.Module, inputs: torch.Tensor, call: str) -> torch.Tensor:
    with torch.no_grad():
        if call == "wplus":  # rosinality's generator: a list of styles, already W+; the image comes first
            return network([inputs], input_is_latent=True, randomize_noise=False)[0]
        return network(inputs)


def _random_network(builder: str, config: dict) -> torch.nn.Module:
    """A network with random weights and random normalisation statistics, so that buffers matter too."""
    torch.manual_seed(0)
    network = build(builder, config).eval()
    for name, buffer in network.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    return network


def _round_trip(name: str, registry: WeightsRegistry, monkeypatch, tmp_path) -> None:
    """Official layout -> registry (converted, then cached) -> our safetensors -> our module: identical outputs."""
    _network_module(name)
    case, entry = ROUND_TRIPS[name], WEIGHT_FILES[name]
    config = case.small_config or dict(entry.config)
    if case.small_config:
        _register(monkeypatch, name, config=config)
    reference = _random_network(entry.builder, config)
    state = reference.state_dict()
    _put(registry, name, {entry.state_key: state, **case.others} if entry.state_key else state)
    torch.manual_seed(1)
    inputs = torch.randn(case.batch, *case.input_shape)
    expected = _run(reference, inputs, case.call)
    assert torch.isfinite(expected).all() and expected.std() > 0

    loaded = registry.get(name)
    assert not loaded.training and torch.equal(_run(loaded, inputs, case.call), expected)
    with monkeypatch.context() as patched:  # the second load reads the safetensors copy: the same tensors
        _never_unpickle(patched)
        cached = registry.get(name).state_dict()
        entries = registry.load_state(name).entries
    assert all(torch.equal(cached[key], value) for key, value in state.items())

    # our module saved in our format; a network with a demo entry goes through the registry again
    target = registry.root / WEIGHT_FILES[case.demo].filename if case.demo else tmp_path / f"{name}.safetensors"
    save_safetensors(loaded.state_dict(), target, {"config": config, "entries": entries})
    if case.demo:
        again = registry.get(case.demo)
    else:
        tensors, metadata = load_safetensors(target)
        again = build(entry.builder, metadata["config"]).eval()
        again.load_state_dict(tensors, strict=True)
    assert torch.equal(_run(again, inputs, case.call), expected)


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "e4e-voxceleb256" else name
                                  for name in ROUND_TRIPS])  # e4e is fixed at 209 M parameters, an 800 MB file
def test_official_checkpoint_round_trip_gives_identical_outputs(name, registry, monkeypatch, tmp_path):
    _round_trip(name, registry, monkeypatch, tmp_path)


def test_direction_matrix_sizes_come_from_the_checkpoint_entries(registry):
    _network_module("directions-voxceleb256")
    entries = {**A_ENTRIES, "num_layers_shift": 4, "shift_dim": 256, "learned_directions": 5}
    _put(registry, "directions-voxceleb256", {"A_matrix": {"linear.weight": torch.randn(4 * 256, 5),
                                                           "linear.bias": torch.zeros(4 * 256)}, **entries})
    matrix = registry.get("directions-voxceleb256")
    assert matrix(torch.zeros(3, 5)).shape == (3, 4, 256)
    assert registry.load_state("directions-voxceleb256").entries["shift_scale"] == 6.0


def test_a_damaged_official_file_is_named(registry):
    path = registry.root / WEIGHT_FILES["e4e-voxceleb256"].filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<!DOCTYPE html><title>Google Drive - Virus scan warning</title>")
    with pytest.raises(checkpoints.CorruptCheckpointError, match=f"{path} is not a readable torch checkpoint"):
        registry.get("e4e-voxceleb256")


def test_the_table_agrees_with_the_network_modules():
    directions, e4e, deca = (_network_module(name) for name in ("directions-voxceleb256", "e4e-voxceleb256", "deca"))
    assert WEIGHT_FILES["directions-voxceleb256"].top_level_keys == directions.CHECKPOINT_KEYS
    assert WEIGHT_FILES["e4e-voxceleb256"].state_key == e4e.CHECKPOINT_KEY
    assert WEIGHT_FILES["deca"].state_key == deca.CHECKPOINT_KEY
