"""The weights registry: which files the pipeline needs, where they live, and how they become loaded networks.

One weights directory holds every file, resolved from an explicit path (`--weights-dir`), else
`$REENACT_WEIGHTS_DIR`, else `weights/` in the project checkout. Bundled files (the `demo` set) ship in the
repository under `models/data/` and are read from there when the weights directory holds no copy of its own. `WEIGHT_FILES` lists the known files by name; named
sets group them (`voxceleb256`: the official release; `demo`: the project's small bundled networks).

    registry = WeightsRegistry()                      # or WeightsRegistry("/data/weights")
    generator = registry.get("stylegan2-voxceleb256")  # built, loaded with strict=True, in eval mode
    registry.status("voxceleb256")                    # present / missing / size / sha256 per file

Official files are pickles: they are read with the weights-only unpickler (storage.checkpoints) and converted once
into `<weights dir>/.cache/<name>.safetensors`, which later loads read. The project's own files are safetensors
already; their metadata may carry `{"config": {...}}` (constructor arguments, which win over the table's) and
`{"entries": {...}}` (plain values, like A's `shift_scale`).

Networks are imported only when built, so this module imports fast and works before (or without) torch models.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from storage.checkpoints import (
    CheckpointKeysError,
    CorruptCheckpointError,
    check_sha256,
    load_converted,
    load_safetensors,
    read_safetensors_metadata,
)
from models import MissingWeightsError
from storage.files import sha256_file
from storage.settings import default_weights_dir

CACHE_DIR = ".cache"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models" / "data"  # files that ship with the code
OFFICIAL_REPO = "github.com/StelaBou/stylegan_directions_face_reenactment"


class UnknownWeightsError(KeyError):
    """No weights of that name are registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class WeightFile:
    """One file of the weights directory and how to turn it into a network.

    `top_level_keys`: entries an official checkpoint must have (empty for a bare state dict or a safetensors file).
    `state_key`: the entry that holds the network's state dict (None: the whole file is the state dict).
    `builder`: "module:callable" that builds the network from `config`; None for data files that other code reads
    (FLAME's model, the RetinaFace detector). `config_from_entries` maps constructor arguments to top-level
    entries of the checkpoint that, when present, give their value (A's sizes).
    """

    name: str
    filename: str
    description: str
    top_level_keys: tuple[str, ...] = ()
    sha256: str | None = None
    where_to_get: str = ""
    state_key: str | None = None
    builder: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)
    config_from_entries: Mapping[str, str] = field(default_factory=dict, compare=False)
    alternatives: tuple[str, ...] = ()  # other accepted file names, in order of preference after `filename`
    bundled: bool = False  # ships at BUNDLED_DIR / filename, the fallback when the weights directory has none

    @property
    def filenames(self) -> tuple[str, ...]:
        return (self.filename, *self.alternatives)


_GENERATOR_256 = {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 1}
_E4E_256 = {"num_layers": 50, "mode": "ir_se", "size": 256}
_DIRECTIONS = {"shift_dim": 512, "input_dim": 15, "w_plus": True, "num_layers": 8, "bias": True}
_FEATURE_TRANSFORMER_256 = {"channels": 512, "resolution": 32, "image_size": 256, "hidden": 64}  # files record theirs
# A's sizes as the official checkpoint records them (`shift_dim` only in the released file, not in training saves)
_DIRECTIONS_FROM_ENTRIES = {"shift_dim": "shift_dim", "input_dim": "learned_directions", "w_plus": "w_plus",
                            "num_layers": "num_layers_shift"}
_A_MATRIX_KEYS = ("A_matrix", "learned_directions", "shift_scale", "w_plus", "num_layers_shift")


def _official(drive_id: str, what: str) -> str:
    return f"{what}, linked from the README of {OFFICIAL_REPO}: https://drive.google.com/file/d/{drive_id}"


WEIGHT_FILES: dict[str, WeightFile] = {entry.name: entry for entry in (
    WeightFile(
        "stylegan2-voxceleb256", "stylegan-voxceleb.pt",
        "StyleGAN2 generator (g_ema), VoxCeleb1, 256 px, W+ 14x512",
        top_level_keys=("g_ema",), state_key="g_ema",
        where_to_get=_official("1cBwIFwq6cYIA5iR8tEvj6BIL7Ji7azIH", "'StyleGAN2-VoxCeleb1'"),
        builder="models.stylegan2:Generator", config=_GENERATOR_256),
    WeightFile(
        "stylegan2-voxceleb256-discriminator", "stylegan-voxceleb.pt",
        "StyleGAN2 discriminator (d) of the same file, when the file has one",
        top_level_keys=("d",), state_key="d",
        where_to_get=_official("1cBwIFwq6cYIA5iR8tEvj6BIL7Ji7azIH", "'StyleGAN2-VoxCeleb1'"),
        builder="models.stylegan2:Discriminator", config={"size": 256, "channel_multiplier": 1}),
    WeightFile(
        "e4e-voxceleb256", "e4e-voxceleb.pt",
        "e4e encoder (IR-SE-50 + FPN), image -> W+, VoxCeleb1",
        top_level_keys=("e",), state_key="e",
        where_to_get=_official("1TRATaREBi4VCMITUZV0ZO2XFU3YZKGlQ", "'e4e-VoxCeleb1'"),
        builder="models.e4e:Encoder4Editing", config=_E4E_256),
    WeightFile(
        "directions-voxceleb256", "A_matrix.pt",
        "direction matrix A: delta-p (15) -> shifts of W+ layers 0-7",
        top_level_keys=_A_MATRIX_KEYS, state_key="A_matrix",
        where_to_get=_official("11aNalhBnPREFQT9i9wmQE0-fkQac4SzQ", "'A-matrix' (section Inference)"),
        builder="models.directions:DirectionMatrix", config=_DIRECTIONS, config_from_entries=_DIRECTIONS_FROM_ENTRIES),
    WeightFile(
        "arcface-ir-se50", "model_ir_se50.pth",
        "ArcFace IR-SE-50 (TreB1eN/InsightFace_Pytorch), identity loss and CSIM; bare state dict",
        where_to_get=_official("1s5pWag4AwqQyhue6HH-M_f2WDV4IVZEl", "'IR-SE50 Model'"),
        builder="models.arcface:Backbone",
        config={"input_size": 112, "num_layers": 50, "mode": "ir_se", "drop_ratio": 0.6, "affine": True}),
    WeightFile(
        "deca", "deca/deca_model.tar",
        "DECA coarse encoder (E_flame, ResNet-50 -> 236 FLAME/camera/light codes)",
        top_level_keys=("E_flame",), state_key="E_flame",
        where_to_get="deca_model.tar from github.com/yfeng95/DECA (README, 'Prepare data'): "
                     "https://drive.google.com/file/d/1rp8kdyLPvErw2dTmqtjISRVvQLj6Yzje; also inside the 'DECA "
                     f"model' data.tar.gz linked from the README of {OFFICIAL_REPO}",
        builder="models.deca:ResnetEncoder", config={"outsize": 236}),
    WeightFile(
        "flame", "deca/generic_model.pkl",
        "FLAME 2020 head model (read by models.flame, not a torch file), or its .npz conversion",
        alternatives=("deca/generic_model.npz",),
        where_to_get="generic_model.pkl of FLAME 2020 from https://flame.is.tue.mpg.de (free registration; its "
                     "licence does not allow us to ship it)"),
    WeightFile(
        "flame-landmark-embedding", "deca/landmark_embedding.npy",
        "DECA's landmark embedding on the FLAME mesh (needed with the .pkl; the .npz conversion includes it)",
        where_to_get="data/landmark_embedding.npy of github.com/yfeng95/DECA (in the repository itself)"),
    WeightFile(
        "retinaface-resnet50", "retinaface/retinaface_resnet50_2020-07-20.pth",
        "RetinaFace ResNet-50 face detector (optional: --detector retinaface)",
        where_to_get="the .pth inside https://github.com/ternaus/retinaface/releases/download/0.01/"
                     "retinaface_resnet50_2020-07-20-f168fae3c.zip (unzip it)"),
    WeightFile(
        "demo-generator", "demo/generator.safetensors",
        "the project's small StyleGAN2 generator (bundled demo set)",
        where_to_get="ships in the repository (models/data/demo/); retrain with `reenact train-generator` "
                     "--config training/configs/demo-generator.yaml", bundled=True,
        builder="models.stylegan2:Generator", config=_GENERATOR_256),
    WeightFile(
        "demo-encoder", "demo/encoder.safetensors",
        "the project's e4e encoder for the demo generator",
        where_to_get="ships in the repository (models/data/demo/); retrain with `reenact train-encoder` "
                     "--config training/configs/demo-encoder.yaml", bundled=True,
        builder="models.e4e:Encoder4Editing", config=_E4E_256),
    WeightFile(
        "demo-directions", "demo/directions.safetensors",
        "the project's direction matrix A for the demo generator",
        where_to_get="ships in the repository (models/data/demo/); retrain with `reenact train-directions` "
                     "--config training/configs/demo-directions.yaml", bundled=True,
        builder="models.directions:DirectionMatrix", config=_DIRECTIONS, config_from_entries=_DIRECTIONS_FROM_ENTRIES),
    WeightFile(
        "demo-feature-transformer", "demo/feature_transformer.safetensors",
        "the project's Feature Transformer for the demo generator (refines G's 32 px features with the source's detail)",
        where_to_get="ships in the repository (models/data/demo/); retrain with `reenact train-feature-transformer` "
                     "--config training/configs/demo-feature-transformer.yaml", bundled=True,
        builder="models.feature_transformer:FeatureTransformer", config=_FEATURE_TRANSFORMER_256),
    WeightFile(
        "demo-joint-encoder", "demo-joint/encoder.safetensors",
        "an encoder for the demo generator trained jointly with A (the demo-joint set)",
        where_to_get="train it: `reenact train-joint --config training/configs/demo-joint.yaml install_dir=DIR` "
                     "puts it here", builder="models.e4e:Encoder4Editing", config=_E4E_256),
    WeightFile(
        "demo-joint-directions", "demo-joint/directions.safetensors",
        "a direction matrix A for the demo generator trained jointly with the encoder (the demo-joint set)",
        where_to_get="train it: `reenact train-joint --config training/configs/demo-joint.yaml install_dir=DIR` "
                     "puts it here", builder="models.directions:DirectionMatrix", config=_DIRECTIONS,
        config_from_entries=_DIRECTIONS_FROM_ENTRIES),
    WeightFile(
        "feature-transformer-voxceleb256", "feature_transformer.safetensors",
        "a Feature Transformer for the official G (optional: --feature-transformer feature-transformer-voxceleb256)",
        where_to_get="the official release has none: train one with `reenact train-feature-transformer` "
                     "generator=stylegan2-voxceleb256 directions=directions-voxceleb256 face3d=deca truncation=0.7 "
                     "on an encoded VoxCeleb store, and put its export here",
        builder="models.feature_transformer:FeatureTransformer", config=_FEATURE_TRANSFORMER_256),
    WeightFile(
        "lpips-alexnet", "alexnet-owt-7be5be79.pth",
        "torchvision's ImageNet AlexNet, the LPIPS trunk (read by models.metrics.lpips; also found in torch hub's "
        "checkpoints folder); LPIPS's v0.1 heads ship in the lpips wheel",
        where_to_get="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision "
                     "AlexNet_Weights.IMAGENET1K_V1)"),
    WeightFile(
        "fid-inception", "pt_inception-2015-12-05-6726825d.pth",
        "FID's Inception-v3 (TensorFlow 2015-12-05, pytorch-fid's port; read by models.metrics.inception; also found "
        "in torch hub's checkpoints folder)",
        where_to_get="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                     "pt_inception-2015-12-05-6726825d.pth"),
)}

WEIGHT_SETS: dict[str, tuple[str, ...]] = {
    "voxceleb256": ("stylegan2-voxceleb256", "e4e-voxceleb256", "directions-voxceleb256", "arcface-ir-se50", "deca",
                    "flame", "flame-landmark-embedding"),
    "demo": ("demo-generator", "demo-encoder", "demo-directions", "demo-feature-transformer"),
    "demo-joint": ("demo-generator", "demo-joint-encoder", "demo-joint-directions", "demo-feature-transformer"),
}


@dataclass(frozen=True)
class ReenactionSet:
    """The networks one reenactment runs, by registry name, and the Net3D whose units A was trained in.

    A's [min, max] table (the map of that Net3D's jaw and expressions to A's units) travels in the directions file
    as its `ranges` entry; the official A_matrix.pt has none and uses the official table that ships with the code.
    `truncation`: what the set's own inference renders with (the official one: 0.7 towards G's mean w).
    `feature_transformer`: the Feature Transformer reenactment uses by default (None: G alone).
    """

    generator: str
    encoder: str
    directions: str
    face3d: str
    truncation: float = 1.0
    feature_transformer: str | None = None


REENACTION_SETS: dict[str, ReenactionSet] = {
    "voxceleb256": ReenactionSet("stylegan2-voxceleb256", "e4e-voxceleb256", "directions-voxceleb256", face3d="deca",
                                 truncation=0.7),
    "demo": ReenactionSet("demo-generator", "demo-encoder", "demo-directions", face3d="synth-regressor",
                          feature_transformer="demo-feature-transformer"),
    # E and A of a train-joint run from the demo set (training/joint.py), installed with its install_dir
    "demo-joint": ReenactionSet("demo-generator", "demo-joint-encoder", "demo-joint-directions",
                                face3d="synth-regressor", feature_transformer="demo-feature-transformer"),
}


def reenaction_set(name: str) -> ReenactionSet:
    """The named set, or an error that lists the known ones."""
    try:
        return REENACTION_SETS[name]
    except KeyError:
        raise UnknownWeightsError(f"no weights set named {name!r}; known: {', '.join(REENACTION_SETS)}") from None


def resolve_weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`explicit` (the --weights-dir option) if given, else $REENACT_WEIGHTS_DIR, else `weights/` of the project."""
    return Path(explicit) if explicit else default_weights_dir()


@dataclass(frozen=True)
class LoadedWeights:
    """A state dict ready for `load_state_dict`, with what is needed to build its network."""

    state: dict[str, torch.Tensor]
    entries: dict[str, Any]  # plain top-level entries of the file, e.g. A's `shift_scale`
    config: dict[str, Any]  # constructor arguments of the network
    path: Path


class WeightsRegistry:
    """The known weight files of one weights directory."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = resolve_weights_dir(root).resolve()

    def entry(self, name: str) -> WeightFile:
        try:
            return WEIGHT_FILES[name]
        except KeyError:
            raise UnknownWeightsError(f"no weights named {name!r}; known: {', '.join(WEIGHT_FILES)}") from None

    def path(self, name: str) -> Path:
        """The file of `name` in this directory; `MissingWeightsError` (saying where to put it) when absent."""
        entry = self.entry(name)
        found = self._existing(entry)
        if found is None:
            expected = self.root / entry.filename
            others = f" (or {', '.join(str(self.root / other) for other in entry.alternatives)})" \
                if entry.alternatives else ""
            raise MissingWeightsError(
                f"{name}: {entry.description}. File not found at {expected}{others}. "
                f"Get it from: {entry.where_to_get}. Put it at that path, or point --weights-dir (or "
                f"$REENACT_WEIGHTS_DIR) at a folder that holds {entry.filename}."
            )
        return found

    def cache_path(self, name: str) -> Path:
        return self.root / CACHE_DIR / f"{name}.safetensors"

    def load_state(self, name: str) -> LoadedWeights:
        """The state dict of `name`, its plain entries and its constructor config (official files via the cache)."""
        entry = self.entry(name)
        path = self.path(name)
        if path.suffix == ".safetensors":
            if entry.sha256:
                check_sha256(path, sha256_file(path), entry.sha256)
            state, metadata = load_safetensors(path)
            entries, file_config = metadata.get("entries", {}), metadata.get("config", {})
        else:
            converted = load_converted(path, self.cache_path(name), key=entry.state_key,
                                       required_keys=entry.top_level_keys, sha256=entry.sha256)
            state, entries, file_config = converted.state, converted.entries, {}
        from_entries = {argument: entries[key] for argument, key in entry.config_from_entries.items() if key in entries}
        return LoadedWeights(state, entries, {**entry.config, **from_entries, **file_config}, path)

    def get(self, name: str, device: str | torch.device = "cpu") -> nn.Module:
        """The network `name`, built, loaded with strict=True, in eval mode, on `device`."""
        return self.load(name, device)[0]

    def load(self, name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
        """The network `name` as `get` returns it, and the file's plain entries (e.g. A's `shift_scale`)."""
        entry = self.entry(name)
        if entry.builder is None:
            raise ValueError(f"{name} is a data file read by its own loader, not a network built here; "
                             f"use registry.path({name!r}) -> {self.root / entry.filename}")
        loaded = self.load_state(name)
        return build_loaded(entry.builder, loaded).to(device).eval(), loaded.entries

    def load_spec(self, spec: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
        """`load` of a registry name, or of a .safetensors file exported by a training stage (its metadata holds
        the builder and constructor arguments): what options that take "a name or a file" read."""
        if spec in WEIGHT_FILES:
            return self.load(spec, device)
        path = Path(spec)
        if path.suffix != ".safetensors" or not path.is_file():
            raise FileNotFoundError(f"{spec!r} is neither a weights-registry name ({', '.join(WEIGHT_FILES)}) nor "
                                    f"a .safetensors file")
        state, metadata = load_safetensors(path)
        if "builder" not in metadata:
            raise CheckpointKeysError(f"{path} does not say which network it holds (no 'builder' in its metadata)")
        loaded = LoadedWeights(state, metadata.get("entries", {}), metadata.get("config", {}), path)
        return build_loaded(metadata["builder"], loaded).to(device).eval(), loaded.entries

    def status(self, weights_set: str | None = None) -> list[dict[str, Any]]:
        """One row per file (of one set, or all): name, path, present, size, sha256_ok (None: no hash pinned)."""
        if weights_set is not None and weights_set not in WEIGHT_SETS:
            raise UnknownWeightsError(f"no weights set named {weights_set!r}; known: {', '.join(WEIGHT_SETS)}")
        names = WEIGHT_SETS[weights_set] if weights_set else tuple(WEIGHT_FILES)
        rows = []
        for name in names:
            entry = WEIGHT_FILES[name]
            path = self._existing(entry) or self.root / entry.filename
            present = path.is_file()
            rows.append({
                "name": name, "path": str(path), "present": present,
                "size": path.stat().st_size if present else None,
                "sha256_ok": self.sha256(name) == entry.sha256.lower() if present and entry.sha256 else None,
                "sets": [set_name for set_name, members in WEIGHT_SETS.items() if name in members],
                "description": entry.description, "where_to_get": entry.where_to_get,
            })
        return rows

    def _existing(self, entry: WeightFile) -> Path | None:
        candidates = [self.root / name for name in entry.filenames]
        if entry.bundled:
            candidates.append(BUNDLED_DIR / entry.filename)
        return next((path for path in candidates if path.is_file()), None)

    def sha256(self, name: str) -> str:
        """The sha256 of `name`'s file (what a result computed with it records), reusing the hash the conversion
        cache recorded for these exact bytes, so a large official file is not read again."""
        path = self.path(name)
        stat, cache = path.stat(), self.cache_path(name)
        try:
            record = read_safetensors_metadata(cache) if cache.is_file() else {}
        except CorruptCheckpointError:
            record = {}
        if (record.get("source_size"), record.get("source_mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
            return record.get("source_sha256") or sha256_file(path)
        return sha256_file(path)



def build(builder: str, config: Mapping[str, Any]) -> nn.Module:
    """Call "package.module:Callable" with `config` as keyword arguments (the import happens only now)."""
    module_name, _, attribute = builder.partition(":")
    return getattr(importlib.import_module(module_name), attribute)(**config)


def build_loaded(builder: str, loaded: LoadedWeights) -> nn.Module:
    """The network of `builder` holding the tensors of `loaded`: every name, every shape (strict)."""
    network = build(builder, loaded.config)
    _check_state_fits(network.state_dict(), loaded, builder)
    network.load_state_dict(loaded.state, strict=True)  # copies into the network's own (aligned) memory and dtypes
    return network


def _check_state_fits(expected: Mapping[str, torch.Tensor], loaded: LoadedWeights, builder: str) -> None:
    """Raise `CheckpointKeysError` listing missing, unexpected and mis-shaped names before load_state_dict does."""
    missing = [name for name in expected if name not in loaded.state]
    unexpected = [name for name in loaded.state if name not in expected]
    misshaped = [f"{name} {tuple(loaded.state[name].shape)} (network: {tuple(value.shape)})"
                 for name, value in expected.items()
                 if name in loaded.state and loaded.state[name].shape != value.shape]
    if missing or unexpected or misshaped:
        arguments = ", ".join(f"{key}={value!r}" for key, value in loaded.config.items())
        problems = [f"{label} {len(names)}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
                    if names]
        raise CheckpointKeysError(f"{loaded.path} does not fit {builder}({arguments}): {'; '.join(problems)}")


def format_status(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `WeightsRegistry.status()` rows, then where to get each missing file."""
    header = ("name", "state", "size", "sha256", "path")
    lines = [(row["name"], "present" if row["present"] else "MISSING", _size(row["size"]),
              {True: "ok", False: "MISMATCH", None: "-"}[row["sha256_ok"]], row["path"]) for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    table = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in (header, *lines)]
    missing = [f"  {row['name']}: {row['where_to_get']}" for row in rows if not row["present"]]
    return "\n".join(table + (["", "where to get the missing files:", *missing] if missing else []))


def _size(size: int | None) -> str:
    return "" if size is None else f"{size / 2**20:.1f} MiB"
