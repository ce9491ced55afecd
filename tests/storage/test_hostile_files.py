"""Weights files, checkpoints and run configs as a hostile user would write them: each carries data, never code.

Every place that reads such a file gets one: a `.safetensors` whose metadata names `subprocess:call`, `os:system` or
`builtins:eval` (or a module that acts on import), an allow-listed network with unknown or absurd constructor
arguments, pickles with a `__reduce__` payload, object arrays in `.npy` files, YAML that builds Python objects. Each
test asserts the refusal, its message, and that nothing ran: the payload's marker file does not exist, the named
module was never imported, the network's constructor was never called (or only on the meta device).
"""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest
import scipy.sparse
import torch
from safetensors.torch import save_file

from models.directions import ParamRanges
from models.flame import UnsafePickleError
from models.stylegan2 import Generator
from storage import networks, weights
from storage.checkpoints import (
    CheckpointKeysError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    read_safetensors_metadata,
    save_safetensors,
)
from storage.weights import (
    BUILDERS,
    WEIGHT_FILES,
    NetworkArgumentsError,
    UnknownBuilderError,
    WeightsRegistry,
    describe_arguments,
)
from training.common.checkpoints import RunDir, latest_checkpoint, read_checkpoint, read_weights
from training.common.config import TrainingConfig, load_config, parse_overrides

SMALL_G = {"size": 8, "style_dim": 8, "n_mlp": 1, "channel_multiplier": 1, "channel_max": 8}
GENERATOR = "models.stylegan2:Generator"


class RunsACommand:
    """Unpickling this runs a shell command (what a tampered pickle does)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "pwned"


@pytest.fixture
def registry(tmp_path) -> WeightsRegistry:
    return WeightsRegistry(tmp_path / "weights")


@pytest.fixture
def probe_module(tmp_path, monkeypatch, marker):
    """A module on sys.path that creates the marker when imported: a builder naming it must not import it."""
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "reenact_hostile_probe.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(): pass\n")
    monkeypatch.syspath_prepend(str(folder))
    return "reenact_hostile_probe"


@pytest.fixture(scope="module")
def g_state() -> dict[str, torch.Tensor]:
    """A small G's state dict, made before any test watches the constructor."""
    return Generator(**SMALL_G).state_dict()


@pytest.fixture
def constructor_never_called(g_state, monkeypatch):
    """Fail the test if G is constructed for real (the meta device, where nothing is allocated, is allowed)."""
    devices: list[str] = []
    original = Generator.__init__

    def spy(self, *args, **kwargs):
        devices.append(torch.empty(0).device.type)
        if devices[-1] != "meta":
            pytest.fail("the generator was constructed from a refused file")
        original(self, *args, **kwargs)

    monkeypatch.setattr(Generator, "__init__", spy)
    return devices


def hostile_builders(marker) -> list[tuple[str, dict]]:
    return [("subprocess:call", {"args": ["touch", str(marker)]}),
            ("os:system", {"command": f"touch {marker}"}),
            ("builtins:eval", {"source": f"open({str(marker)!r}, 'w')"})]


def exported(path, builder, config=None, entries=None, state=None):
    """A file in the layout training exports: tensors, and builder / config / entries in the metadata."""
    metadata = {"builder": builder, "config": config if config is not None else {}, "entries": entries or {}}
    save_safetensors(state if state is not None else {"w": torch.zeros(2)}, path, metadata)
    return path


def assert_refused_builder(error: pytest.ExceptionInfo, builder: str) -> None:
    message = str(error.value)
    assert f"names the builder {builder!r}" in message and "nothing was imported or run" in message
    assert "may name only: models.stylegan2:Generator" in message and "Re-export the file" in message


# --- builders a file names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(3), ids=["subprocess-call", "os-system", "builtins-eval"])
def test_a_file_naming_a_callable_is_refused_before_anything_runs(registry, tmp_path, marker, case):
    builder, config = hostile_builders(marker)[case]
    path = exported(tmp_path / "evil.safetensors", builder, config)
    with pytest.raises(UnknownBuilderError) as caught:
        registry.load_spec(str(path))
    assert_refused_builder(caught, builder)
    assert not marker.exists()


def test_a_builder_module_is_never_imported(registry, tmp_path, marker, probe_module):
    path = exported(tmp_path / "evil.safetensors", f"{probe_module}:build")
    with pytest.raises(UnknownBuilderError):
        registry.load_spec(str(path))
    assert not marker.exists() and probe_module not in sys.modules


def test_a_registered_file_naming_another_builder_is_refused(registry, marker):
    path = registry.root / WEIGHT_FILES["demo-feature-transformer"].filename  # the weights dir wins over the bundle
    exported(path, "subprocess:call", {"args": ["touch", str(marker)]})
    with pytest.raises(UnknownBuilderError):
        registry.get("demo-feature-transformer")
    exported(path, GENERATOR, SMALL_G)  # one of ours, but not what this name holds
    with pytest.raises(CheckpointKeysError, match="holds a models.stylegan2:Generator, but demo-feature-transformer"):
        registry.get("demo-feature-transformer")
    assert not marker.exists()


def test_reenactment_and_training_refuse_such_a_file(tmp_path, marker):
    """The two options that take "a name or a file": --feature-transformer FILE, train-feature-transformer
    directions=FILE (also when a run directory's config names it)."""
    from tasks.reenact import ReenactConfig, ReenactNetworks
    from training.feature_transformer import FeatureTransformerTrainingConfig, frozen_directions

    path = exported(tmp_path / "evil.safetensors", "subprocess:call", {"args": ["touch", str(marker)]})
    with pytest.raises(UnknownBuilderError):
        ReenactNetworks(ReenactConfig(weights="demo", feature_transformer=str(path), device="cpu"))
    run_config = tmp_path / "run" / "launch-config.json"
    run_config.parent.mkdir()
    run_config.write_text(json.dumps({"directions": str(path), "out": str(tmp_path / "run")}))
    config = load_config(FeatureTransformerTrainingConfig, run_config)
    with pytest.raises(UnknownBuilderError):
        frozen_directions(config, torch.device("cpu"))
    assert not marker.exists()


def test_a_file_of_another_network_is_refused_where_one_is_expected(registry, tmp_path, g_state):
    path = exported(tmp_path / "g.safetensors", GENERATOR, SMALL_G, state=g_state)
    with pytest.raises(CheckpointKeysError, match="holds a models.stylegan2:Generator, not the "
                                                  "models.feature_transformer:FeatureTransformer needed here"):
        registry.load_spec(str(path), expect="models.feature_transformer:FeatureTransformer")
    with pytest.raises(CheckpointKeysError, match="not the models.face3d.regressor:Face3DRegressor"):
        networks.face3d_backend(registry, "synth-regressor", regressor=str(path))


# --- constructor arguments and entries -------------------------------------------------------------------------------

HOSTILE_CONFIGS = {
    "unknown key": ({**SMALL_G, "__class__": "os.system"}, "__class__: Extra inputs are not permitted"),
    "unlisted argument": ({**SMALL_G, "blur_kernel": [1] * 100_000}, "blur_kernel: Extra inputs are not permitted"),
    "string for a size": ({**SMALL_G, "size": "8; touch pwned"}, "size: Input should be a valid integer"),
    "float for a size": ({**SMALL_G, "size": 8.0}, "size: Input should be a valid integer"),
    "bool for a size": ({**SMALL_G, "n_mlp": True}, "n_mlp: Input should be a valid integer"),
    "nested value": ({**SMALL_G, "style_dim": {"__reduce__": "os.system"}}, "style_dim: Input should be a valid"),
    "terabyte width": ({**SMALL_G, "style_dim": 10**9}, "style_dim: Input should be less than or equal to 2048"),
    "huge image": ({**SMALL_G, "size": 2**20}, "size: Input should be less than or equal to 1024"),
    "million layers": ({**SMALL_G, "n_mlp": 10**6}, "n_mlp: Input should be less than or equal to 16"),
    "not a power of two": ({**SMALL_G, "size": 100}, "size: Value error, must be a power of two"),
    "missing argument": ({"size": 8}, "style_dim: Field required"),
    "not a mapping": ([8, 8, 1], "they must be a mapping of names to values, not a list"),
}


@pytest.mark.parametrize("case", HOSTILE_CONFIGS)
def test_hostile_constructor_arguments_are_refused_before_construction(registry, tmp_path, case, g_state,
                                                                       constructor_never_called):
    config, reason = HOSTILE_CONFIGS[case]
    path = exported(tmp_path / "g.safetensors", GENERATOR, config, state=g_state)
    with pytest.raises(NetworkArgumentsError) as caught:
        registry.load_spec(str(path))
    message = str(caught.value)
    assert reason in message and "Allowed: size (int" in message and "Fix the file's 'config'" in message
    assert constructor_never_called == []


def test_arguments_in_bounds_that_do_not_fit_the_file_allocate_nothing(registry, tmp_path, g_state,
                                                                      constructor_never_called):
    big = {"size": 1024, "style_dim": 2048, "n_mlp": 16, "channel_multiplier": 4, "channel_max": 2048}  # ~10 GB
    path = exported(tmp_path / "g.safetensors", GENERATOR, big, state=g_state)
    with pytest.raises(CheckpointKeysError, match="does not fit models.stylegan2:Generator"):
        registry.load_spec(str(path))
    assert constructor_never_called == ["meta"]  # checked against the file on the meta device only


@pytest.mark.parametrize("entries, reason", [
    ({"shift_scale": -6.0}, "shift_scale: Input should be greater than 0"),
    ({"shift_scale": float("nan")}, "shift_scale: Input should be a finite number"),
    ({"shift_scale": "6; touch pwned"}, "shift_scale: Input should be a valid number"),
    ({"ranges": [[0.0, 1.0]] * 100_000}, "ranges: List should have at most 54 items"),
    ([1, 2], "'entries' must map names to plain values"),
], ids=["negative", "nan", "string", "huge-table", "not-a-mapping"])
def test_hostile_entries_are_refused(registry, tmp_path, entries, reason):
    from models.directions import DirectionMatrix

    config = {"shift_dim": 4, "input_dim": 3, "num_layers": 2}
    path = exported(tmp_path / "a.safetensors", "models.directions:DirectionMatrix", config,
                    state=DirectionMatrix(**config).state_dict())
    save_safetensors(DirectionMatrix(**config).state_dict(), path,
                     {"builder": "models.directions:DirectionMatrix", "config": config, "entries": entries})
    with pytest.raises(NetworkArgumentsError, match=reason.replace("[", r"\[")):
        registry.load_spec(str(path))


def test_metadata_that_is_not_a_mapping_or_too_deep_is_corrupt(tmp_path):
    for name, text in (("list", "[1, 2]"), ("deep", "[" * 100_000 + "]" * 100_000)):
        path = tmp_path / f"{name}.safetensors"
        save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "pt", "reenact": text})
        with pytest.raises(CorruptCheckpointError, match=str(path)):
            read_safetensors_metadata(path)


def test_every_table_entry_and_allow_listed_builder_agrees():
    for name, entry in WEIGHT_FILES.items():
        if entry.builder:
            assert entry.builder in BUILDERS, name
            weights.network_arguments(entry.builder, entry.config)  # the table's own arguments pass their checks
    from models.irse import MODES, UNITS_PER_STAGE

    arguments = BUILDERS["models.e4e:Encoder4Editing"].arguments.model_fields
    assert set(arguments["num_layers"].annotation.__args__) == set(UNITS_PER_STAGE)
    assert set(arguments["mode"].annotation.__args__) == set(MODES)
    assert describe_arguments(BUILDERS[GENERATOR].arguments).startswith("size (int")


# --- pickles: the official formats and training checkpoints -------------------------------------------------------

PICKLED = {  # registry name -> how the pipeline reaches it
    "stylegan2-voxceleb256": lambda registry: registry.get("stylegan2-voxceleb256"),
    "e4e-voxceleb256": lambda registry: registry.get("e4e-voxceleb256"),
    "directions-voxceleb256": lambda registry: registry.get("directions-voxceleb256"),
    "arcface-ir-se50": lambda registry: networks.identity_embedder(registry, "arcface"),
    "deca": lambda registry: networks.face3d_backend(registry, "deca"),
    "retinaface-resnet50": lambda registry: networks.face_detector(registry, "retinaface"),
    "lpips-alexnet": lambda registry: networks.lpips(registry),
    "lpips-heads": lambda registry: networks.lpips(registry, random_backbone=True),
    "fid-inception": lambda registry: networks.fid_inception(registry),
}


@pytest.mark.parametrize("name", PICKLED)
def test_a_pickle_with_a_payload_is_refused_by_every_loader(registry, tmp_path, marker, monkeypatch, name):
    entry = WEIGHT_FILES[name]
    if entry.package:  # a file that ships inside a package: that package's folder, here a copy we can write
        monkeypatch.setattr(weights, "_package_folder", lambda package: tmp_path / package)
        path = tmp_path / entry.package / entry.filename
    else:
        path = registry.root / entry.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: {"w": torch.zeros(1)} for key in entry.top_level_keys + ((entry.state_key,) if entry.state_key
                                                                               else ())}
               | {"payload": RunsACommand(f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused: it names posix\.system"):
        PICKLED[name](registry)
    assert not marker.exists() and not registry.cache_path(name).exists()


def test_training_reads_no_code_and_no_hostile_arguments(tmp_path, marker, g_state, constructor_never_called):
    """read_weights: what init=, generator=, encoder=, backbone= of the training stages read."""
    with_builder = exported(tmp_path / "builder.safetensors", "os:system", {"command": f"touch {marker}"})
    with pytest.raises(UnknownBuilderError):
        read_weights(str(with_builder), "g_ema")
    hostile = {**SMALL_G, "style_dim": 10**9}
    bare = tmp_path / "bare.safetensors"  # no builder: the key says which network the arguments are for
    save_safetensors(g_state, bare, {"config": hostile})
    with pytest.raises(NetworkArgumentsError, match="style_dim: Input should be less than or equal to 2048"):
        read_weights(str(bare), "g_ema")
    with pytest.raises(NetworkArgumentsError, match="no 'builder' to check them against"):
        read_weights(str(bare), None)

    official = tmp_path / "recorded.pt"
    torch.save({"g_ema": {"w": torch.zeros(1)}, "networks": {"g_ema": hostile}}, official)
    with pytest.raises(NetworkArgumentsError, match=r"\['networks'\]\['g_ema'\].*style_dim"):
        read_weights(str(official), "g_ema")
    torch.save({"g_ema": {"w": torch.zeros(1)}, "networks": {"shell": {"command": f"touch {marker}"}}}, official)
    with pytest.raises(UnknownBuilderError, match="records constructor arguments for 'shell'"):
        read_weights(str(official), "g_ema")
    torch.save({"g_ema": {"w": torch.zeros(1)}, "opts": RunsACommand(f"touch {marker}")}, official)
    with pytest.raises(UnsafeCheckpointError):
        read_weights(str(official), "g_ema")
    assert not marker.exists() and constructor_never_called == []


def test_resume_refuses_a_tampered_checkpoint(tmp_path, marker):
    """What a resumed run reads: the run directory's latest checkpoint (`read_checkpoint`, called by the loop)."""
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    torch.save({"step": 10, "e": {"w": torch.zeros(1)}, "rng": [RunsACommand(f"touch {marker}")]},
               run.checkpoint(10))
    with pytest.raises(UnsafeCheckpointError, match="step-0000010.pt refused"):
        read_checkpoint(latest_checkpoint(run))
    torch.save({"step": 20, "e": {"w": torch.zeros(1)}, "networks": {"e": {"num_layers": 10**6}}},
               run.checkpoint(20))
    with pytest.raises(NetworkArgumentsError, match=r"num_layers: Input should be 18, 50, 100 or 152"):
        read_checkpoint(latest_checkpoint(run))
    assert not marker.exists()


# --- run configs -------------------------------------------------------------------------------------------------------

def test_config_files_and_overrides_hold_plain_values_only(tmp_path, marker):
    tagged = tmp_path / "config.yaml"
    tagged.write_text(f"steps: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match=r"config\.yaml: could not determine a constructor .*never Python objects"):
        load_config(TrainingConfig, tagged)
    with pytest.raises(ValueError, match="override 'seed=!!python/name:os.system'"):
        parse_overrides(["seed=!!python/name:os.system"])
    unknown = tmp_path / "config.json"  # a run directory's config.json with a field no stage has
    unknown.write_text(json.dumps({"steps": 10, "__init__": f"touch {marker}"}))
    with pytest.raises(ValueError, match="__init__\n  Extra inputs are not permitted"):
        load_config(TrainingConfig, unknown)
    assert not marker.exists()


# --- FLAME's pickles and the .npy tables ------------------------------------------------------------------------------

def test_flame_files_in_the_weights_directory_run_nothing(registry, marker):
    deca = registry.root / "deca"
    deca.mkdir(parents=True)
    np.save(deca / "landmark_embedding.npy", np.zeros(3))  # plain: the model file is the hostile one first
    (deca / "generic_model.pkl").write_bytes(pickle.dumps({"f": RunsACommand(f"touch {marker}")}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        networks.flame(registry)
    (deca / "generic_model.pkl").write_bytes(pickle.dumps({"f": eval}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"(__builtin__|builtins)\.eval"):
        networks.flame(registry)
    # sizes that would allocate terabytes: an array and a sparse matrix that state absurd shapes
    (deca / "generic_model.pkl").write_bytes(pickle.dumps({"v": HugeArray()}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing an array of shape \(1000000000000,\)"):
        networks.flame(registry)
    (deca / "generic_model.pkl").write_bytes(
        pickle.dumps({"J_regressor": scipy.sparse.csc_matrix(([1.0], ([0], [0])), shape=(10**9, 10))}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing a sparse matrix of shape \(1000000000, 10\)"):
        networks.flame(registry)
    (deca / "generic_model.pkl").unlink()
    np.savez(deca / "generic_model.npz", format=np.array("x"))
    np.save(deca / "landmark_embedding.npy", np.array([RunsACommand(f"touch {marker}")], dtype=object),
            allow_pickle=True)
    with pytest.raises(ValueError, match="not a FLAME .npz"):  # the .npz is read with allow_pickle=False
        networks.flame(registry)
    (deca / "generic_model.npz").unlink()
    (deca / "generic_model.pkl").write_bytes(pickle.dumps({}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):  # the embedding's object array
        networks.flame(registry)
    assert not marker.exists()


class HugeArray:
    def __reduce__(self):
        return np.ndarray, ((10**12,), np.dtype(np.float64))


def test_a_ranges_table_with_an_object_array_is_refused_unread(tmp_path, marker):
    path = tmp_path / "ranges-deca.npy"
    np.save(path, np.array([RunsACommand(f"touch {marker}")], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="is not a ranges table of numbers: Object arrays cannot be loaded"):
        ParamRanges.load(path)
    assert not marker.exists()
