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
already; their metadata may carry `{"builder": ...}`, `{"config": {...}}` (constructor arguments, which win over the
table's) and `{"entries": {...}}` (plain values, like A's `shift_scale`).

A weights file carries data, never code: the only networks a file (or the table) may name are those of `BUILDERS`,
each with a typed model of its constructor arguments (known names, plain values, sane sizes). Anything else is
refused before any module is imported; a network is first built on the meta device (no memory) and checked against
the file's tensors, so a config that asks for more than the file holds allocates nothing.

This is the one place that reads weights files: `storage.networks` builds the metric networks, detectors and Net3D
backends from it, and `models/` only ever receives state dicts and built modules.

Networks are imported only when built, so this module imports fast and works before (or without) torch models.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from collections.abc import Mapping

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from storage.checkpoints import (
    CheckpointError,
    CheckpointKeysError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    check_sha256,
    load_checkpoint,
    load_converted,
    load_safetensors,
    read_safetensors_metadata,
    split_checkpoint,
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


class UnknownBuilderError(UnsafeCheckpointError):
    """A weights file names a callable that is not one of the project's networks; nothing was imported."""


class NetworkArgumentsError(CheckpointError):
    """A weights file's constructor arguments are not the network's known ones with plain, sane values."""


# ------------------------------------------------------------------------------ the networks a file may name

def _power_of_two(value: int) -> int:
    if value < 1 or 2 ** int(math.log2(value)) != value:
        raise ValueError("must be a power of two")
    return value


Resolution = Annotated[int, Field(ge=4, le=1024), AfterValidator(_power_of_two)]
Width = Annotated[int, Field(ge=1, le=2048)]  # channels of one layer


class NetworkArguments(BaseModel):
    """Constructor arguments a weights file may pass: the network's own names, plain values, sizes in bounds
    (the largest official network is far inside them; nothing here can ask for terabytes)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GeneratorArguments(NetworkArguments):
    size: Resolution
    style_dim: Width
    n_mlp: int = Field(ge=1, le=16)
    channel_multiplier: int = Field(2, ge=1, le=4)
    lr_mlp: float = Field(0.01, gt=0, le=1)
    channel_max: Width = 512


class DiscriminatorArguments(NetworkArguments):
    size: Resolution
    channel_multiplier: int = Field(2, ge=1, le=4)
    channel_max: Width = 512


class EncoderArguments(NetworkArguments):
    num_layers: Literal[18, 50, 100, 152] = 50  # models.irse.UNITS_PER_STAGE
    mode: Literal["ir", "ir_se"] = "ir_se"
    size: Resolution = 256
    style_dim: Width = 512
    channel_max: Width = 512
    input_size: Resolution = 256


class DirectionsArguments(NetworkArguments):
    shift_dim: Width = 512
    input_dim: int = Field(15, ge=1, le=256)
    out_dim: Width | None = None
    w_plus: bool = True
    bias: bool = True
    num_layers: int = Field(8, ge=1, le=32)


class FeatureTransformerArguments(NetworkArguments):
    channels: Width
    resolution: Resolution = 32
    image_size: Resolution = 256
    hidden: Width = 64


class ArcFaceArguments(NetworkArguments):
    input_size: Literal[112, 224] = 112
    num_layers: Literal[50, 100, 152] = 50
    mode: Literal["ir", "ir_se"] = "ir_se"
    drop_ratio: float = Field(0.6, ge=0, le=1)
    affine: bool = True


class DecaArguments(NetworkArguments):
    outsize: int = Field(236, ge=1, le=4096)


class RegressorArguments(NetworkArguments):
    widths: list[Width] = Field([16, 32, 64, 96, 128], min_length=1, max_length=6)  # 96 px input, halved per stage
    hidden: int = Field(256, ge=1, le=4096)
    outputs: int = Field(21, ge=1, le=256)


class NoArguments(NetworkArguments):
    pass


@dataclass(frozen=True)
class Builder:
    """A network a weights file may name: where its class lives, its constructor arguments, and the entries of a
    checkpoint (official or training layout) that hold one."""

    target: str  # "package.module:Callable", imported only when built
    arguments: type[NetworkArguments]
    state_keys: tuple[str, ...] = ()


# The allow-list: the only callables a weights file, a checkpoint or the table below can have built.
BUILDERS: dict[str, Builder] = {builder.target: builder for builder in (
    Builder("models.stylegan2:Generator", GeneratorArguments, ("g_ema", "g")),
    Builder("models.stylegan2:Discriminator", DiscriminatorArguments, ("d",)),
    Builder("models.e4e:Encoder4Editing", EncoderArguments, ("e",)),
    Builder("models.directions:DirectionMatrix", DirectionsArguments, ("A_matrix",)),
    Builder("models.feature_transformer:FeatureTransformer", FeatureTransformerArguments, ("feature_transformer",)),
    Builder("models.arcface:Backbone", ArcFaceArguments),
    Builder("models.deca:ResnetEncoder", DecaArguments, ("E_flame",)),
    Builder("models.face3d.regressor:Face3DRegressor", RegressorArguments),
    Builder("models.detect.retinaface_backend:build_network", NoArguments),
)}


def builder_of(target: Any, source: str | os.PathLike = "the weights table") -> Builder:
    """The allow-listed builder `target`; `UnknownBuilderError` (nothing imported) for anything else."""
    if isinstance(target, str) and target in BUILDERS:
        return BUILDERS[target]
    raise UnknownBuilderError(
        f"{source} names the builder {target!r}, which is not one of the project's networks; nothing was imported "
        f"or run. A weights file may name only: {', '.join(BUILDERS)}. Re-export the file with this project's "
        f"training commands (they write the builder and its arguments), or get it from its official source."
    )


def builder_for_key(key: str, source: str | os.PathLike) -> Builder:
    """The builder of a checkpoint entry ('g_ema', 'e', 'A_matrix', ...): what its recorded arguments construct."""
    for builder in BUILDERS.values():
        if key in builder.state_keys:
            return builder
    known = sorted(key for builder in BUILDERS.values() for key in builder.state_keys)
    raise UnknownBuilderError(f"{source} records constructor arguments for {key!r}, which is not a network this "
                              f"project builds (known entries: {', '.join(known)}); nothing was built")


def network_arguments(target: str, config: Any, source: str | os.PathLike = "the weights table") -> dict[str, Any]:
    """`config` checked against the constructor arguments of `target` (allow-listed): the arguments as given,
    validated, or `NetworkArgumentsError` that says which are refused and what is allowed."""
    builder = builder_of(target, source)
    if isinstance(config, Mapping):
        try:
            return builder.arguments.model_validate(dict(config)).model_dump(exclude_unset=True)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, issue['loc'])) or 'config'}: {issue['msg']} "
                                 f"(got {_short(issue.get('input'))})" for issue in error.errors())
    else:
        problems = f"they must be a mapping of names to values, not a {type(config).__name__}"
    raise NetworkArgumentsError(
        f"{source}: the constructor arguments of {target} are refused: {problems}. Allowed: "
        f"{describe_arguments(builder.arguments)}. Fix the file's 'config' metadata (or re-export the network "
        f"with this project's training commands)."
    )


def describe_arguments(arguments: type[NetworkArguments]) -> str:
    """'size (int, ge 4, le 1024, a power of two), ...': what a file may pass, for error messages."""
    if not arguments.model_fields:
        return "none"
    parts = []
    for name, info in arguments.model_fields.items():
        rules = [f"{kind} {getattr(rule, kind)}" for rule in info.metadata for kind in ("ge", "gt", "le", "lt")
                 if getattr(rule, kind, None) is not None]
        rules += ["a power of two" for rule in info.metadata if getattr(rule, "func", None) is _power_of_two]
        parts.append(f"{name} ({', '.join([_type_name(info.annotation), *rules])})")
    return ", ".join(parts)


def _type_name(annotation: Any) -> str:
    origin, arguments = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(arguments[0])
    if origin is Literal:
        return "one of " + ", ".join(map(repr, arguments))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(argument) for argument in arguments)
    if origin is list:
        return f"list of {_type_name(arguments[0])}"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class WeightFile:
    """One file of the weights directory and how to turn it into a network.

    `top_level_keys`: entries an official checkpoint must have (empty for a bare state dict or a safetensors file).
    `state_key`: the entry that holds the network's state dict (None: the whole file is the state dict).
    `builder`: the `BUILDERS` entry that builds the network from `config`; None for files whose network is put
    together in `storage.networks` (FLAME's model, LPIPS, the FID Inception). `config_from_entries` maps
    constructor arguments to top-level entries of the checkpoint that, when present, give their value (A's sizes).
    Where a file is looked for: the weights directory (`filename`, then `alternatives`), then the repository when
    `bundled`, then torch hub's checkpoints folder when `torch_hub` (where torchvision and pytorch-fid keep what they
    download); `package`: only inside that installed package's folder (a file that ships in a wheel).
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
    torch_hub: bool = False
    package: str | None = None

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
        "RetinaFace ResNet-50 face detector (optional: --detector retinaface); a bare state dict",
        where_to_get="the .pth inside https://github.com/ternaus/retinaface/releases/download/0.01/"
                     "retinaface_resnet50_2020-07-20-f168fae3c.zip (download and unzip it yourself; this program "
                     "never downloads weights)",
        builder="models.detect.retinaface_backend:build_network"),
    WeightFile(
        "face3d-synth-regressor", "face3d_synth_regressor.safetensors",
        "the synth-regressor Net3D: a small CNN learned on the synthetic world (bundled)",
        where_to_get="ships in the repository (models/data/); retrain it with `python -m training.face3d_regressor "
                     "--install`", bundled=True,
        builder="models.face3d.regressor:Face3DRegressor", config={"widths": [16, 32, 64, 96, 128], "hidden": 256,
                                                                   "outputs": 21}),
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
                     "AlexNet_Weights.IMAGENET1K_V1)", torch_hub=True),
    WeightFile(
        "lpips-heads", "weights/v0.1/alex.pth",
        "LPIPS's v0.1 linear heads for AlexNet, a bare state dict inside the installed lpips package",
        where_to_get="the lpips wheel (pip install lpips==0.1.4; it is in requirements/lock.txt)", package="lpips"),
    WeightFile(
        "fid-inception", "pt_inception-2015-12-05-6726825d.pth",
        "FID's Inception-v3 (TensorFlow 2015-12-05, pytorch-fid's port; read by models.metrics.inception; also found "
        "in torch hub's checkpoints folder)",
        where_to_get="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                     "pt_inception-2015-12-05-6726825d.pth", torch_hub=True),
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


AUTO_SET = "auto"  # the official set when its files are there, else the bundled demo set


def set_files(name: str) -> tuple[str, ...]:
    """The files one reenactment with the set `name` reads: its networks and its Net3D's weights (if any)."""
    chosen = reenaction_set(name)
    face3d = {"deca": ("deca",), "synth-regressor": ("face3d-synth-regressor",)}.get(chosen.face3d, ())
    transformer = (chosen.feature_transformer,) if chosen.feature_transformer else ()
    return (chosen.generator, chosen.encoder, chosen.directions, *face3d, *transformer)


def choose_set(name: str, weights_dir: str | os.PathLike | None = None) -> tuple[str, list[str]]:
    """The set to reenact with: `name` itself, or for AUTO_SET the official 'voxceleb256' when every file it reads
    is in the weights directory, else the bundled 'demo'; with the missing official files (empty when none)."""
    if name != AUTO_SET:
        return name, []
    registry = WeightsRegistry(weights_dir)
    missing = [str(registry.candidates(file)[0]) for file in set_files("voxceleb256") if registry._existing(file) is None]
    return ("demo" if missing else "voxceleb256"), missing


def reenaction_set(name: str) -> ReenactionSet:
    """The named set, or an error that lists the known ones."""
    try:
        return REENACTION_SETS[name]
    except KeyError:
        raise UnknownWeightsError(f"no weights set named {name!r}; known: {', '.join(REENACTION_SETS)}") from None


def resolve_weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`explicit` (the --weights-dir option) if given, else $REENACT_WEIGHTS_DIR, else `weights/` of the project."""
    return Path(explicit) if explicit else default_weights_dir()


class FileEntries(BaseModel):
    """The plain values a weights file hands out beside its tensors. The ones code reads are typed here; others pass
    as the JSON they are (they cannot hold code)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    shift_scale: float | None = Field(None, gt=0, le=1000, allow_inf_nan=False)  # A's units
    ranges: list[tuple[float | None, float | None]] | None = Field(None, max_length=54)  # models.directions table


def file_entries(entries: Any, source: str | os.PathLike) -> dict[str, Any]:
    """`entries` checked (`FileEntries`), as given; `NetworkArgumentsError` naming what is wrong."""
    if not isinstance(entries, Mapping) or not all(isinstance(name, str) for name in entries):
        raise NetworkArgumentsError(f"{source}: 'entries' must map names to plain values, not a "
                                    f"{type(entries).__name__}")
    try:
        FileEntries.model_validate(dict(entries))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, issue['loc']))}: {issue['msg']}" for issue in error.errors())
        raise NetworkArgumentsError(f"{source}: its entries are refused: {problems}. Fix the file's 'entries' "
                                    f"metadata (or re-export it).") from None
    return dict(entries)


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

    def candidates(self, name: str) -> list[Path]:
        """Where the file of `name` is looked for, in order."""
        entry = self.entry(name)
        if entry.package:
            folder = _package_folder(entry.package)
            return [folder / entry.filename] if folder else []
        paths = [self.root / filename for filename in entry.filenames]
        if entry.bundled:
            paths.append(BUNDLED_DIR / entry.filename)
        if entry.torch_hub:
            paths.append(Path(torch.hub.get_dir()) / "checkpoints" / entry.filename)
        return paths

    def path(self, name: str) -> Path:
        """The file of `name` in this directory; `MissingWeightsError` (saying where to put it) when absent."""
        entry = self.entry(name)
        found = self._existing(name)
        if found is None:
            if entry.package:
                raise MissingWeightsError(f"{name}: {entry.description}. The {entry.package} package is not installed "
                                          f"or lacks {entry.filename}. Get it from: {entry.where_to_get}.")
            expected, *others = self.candidates(name)
            also = f" (or {', '.join(map(str, others))})" if others else ""
            raise MissingWeightsError(
                f"{name}: {entry.description}. File not found at {expected}{also}. "
                f"Get it from: {entry.where_to_get}. Put it at that path, or point --weights-dir (or "
                f"$REENACT_WEIGHTS_DIR) at a folder that holds {entry.filename}."
            )
        return found

    def cache_path(self, name: str) -> Path:
        return self.root / CACHE_DIR / f"{name}.safetensors"

    def load_state(self, name: str) -> LoadedWeights:
        """The state dict of `name`, its plain entries and its constructor config (official files via the cache),
        each checked: a file that names a network other than the table's, or arguments it may not have, is refused."""
        entry = self.entry(name)
        path = self.path(name)
        if path.suffix == ".safetensors":
            if entry.sha256:
                check_sha256(path, sha256_file(path), entry.sha256)
            state, metadata = load_safetensors(path)
            if "builder" in metadata and metadata["builder"] != entry.builder:
                builder_of(metadata["builder"], path)  # an unknown one is refused as such
                raise CheckpointKeysError(f"{path} holds a {metadata['builder']}, but {name} is a "
                                          f"{entry.builder or 'data file'}; is this the right file?")
            entries, file_config = metadata.get("entries", {}), metadata.get("config", {})
        elif entry.package:  # a small file inside an installed package: read as it is, nothing cached beside it
            state, entries = split_checkpoint(load_checkpoint(path), entry.state_key, entry.top_level_keys, path)
            file_config = {}
        else:
            converted = load_converted(path, self.cache_path(name), key=entry.state_key,
                                       required_keys=entry.top_level_keys, sha256=entry.sha256)
            state, entries, file_config = converted.state, converted.entries, {}
        entries = file_entries(entries, path)
        if not isinstance(file_config, Mapping):
            raise NetworkArgumentsError(f"{path}: its 'config' must be a mapping of constructor arguments")
        from_entries = {argument: entries[key] for argument, key in entry.config_from_entries.items() if key in entries}
        config = {**entry.config, **from_entries, **file_config}
        if entry.builder:
            config = network_arguments(entry.builder, config, path)
        return LoadedWeights(state, entries, config, path)

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

    def load_spec(self, spec: str, device: str | torch.device = "cpu",
                  expect: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """`load` of a registry name, or of a .safetensors file exported by a training stage (its metadata names
        the builder, one of `BUILDERS`, and its constructor arguments): what options that take "a name or a file"
        read. `expect`: the builder the caller needs; a name or file holding another network is refused."""
        if spec in WEIGHT_FILES:
            _check_expected(self.entry(spec).builder, expect, spec)
            return self.load(spec, device)
        path = Path(spec)
        if path.suffix != ".safetensors" or not path.is_file():
            raise FileNotFoundError(f"{spec!r} is neither a weights-registry name ({', '.join(WEIGHT_FILES)}) nor "
                                    f"a .safetensors file")
        metadata = read_safetensors_metadata(path)  # the header alone: nothing is read or built before the checks
        if "builder" not in metadata:
            raise CheckpointKeysError(f"{path} does not say which network it holds (no 'builder' in its metadata)")
        builder = builder_of(metadata["builder"], path).target
        _check_expected(builder, expect, path)
        config = network_arguments(builder, metadata.get("config", {}), path)
        entries = file_entries(metadata.get("entries", {}), path)
        state, _ = load_safetensors(path)
        return build_loaded(builder, LoadedWeights(state, entries, config, path)).to(device).eval(), entries

    def status(self, weights_set: str | None = None) -> list[dict[str, Any]]:
        """One row per file (of one set, or all): name, path, present, size, sha256_ok (None: no hash pinned)."""
        if weights_set is not None and weights_set not in WEIGHT_SETS:
            raise UnknownWeightsError(f"no weights set named {weights_set!r}; known: {', '.join(WEIGHT_SETS)}")
        names = WEIGHT_SETS[weights_set] if weights_set else tuple(WEIGHT_FILES)
        rows = []
        for name in names:
            entry = WEIGHT_FILES[name]
            path = self._existing(name) or next(iter(self.candidates(name)), self.root / entry.filename)
            present = path.is_file()
            rows.append({
                "name": name, "path": str(path), "present": present,
                "size": path.stat().st_size if present else None,
                "sha256_ok": self.sha256(name) == entry.sha256.lower() if present and entry.sha256 else None,
                "sets": [set_name for set_name, members in WEIGHT_SETS.items() if name in members],
                "description": entry.description, "where_to_get": entry.where_to_get,
            })
        return rows

    def _existing(self, name: str) -> Path | None:
        return next((path for path in self.candidates(name) if path.is_file()), None)

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


def _check_expected(builder: str | None, expect: str | None, source: str | os.PathLike) -> None:
    if expect is not None and builder != expect:
        raise CheckpointKeysError(f"{source} holds a {builder or 'data file'}, not the {expect} needed here")


def _package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def build(builder: str, config: Mapping[str, Any]) -> nn.Module:
    """The network of an allow-listed `builder` ("package.module:Callable", imported only now) called with
    `config` as keyword arguments, once both passed their checks (`builder_of`, `network_arguments`)."""
    arguments = network_arguments(builder, config)
    module_name, _, attribute = builder.partition(":")
    return getattr(importlib.import_module(module_name), attribute)(**arguments)


def build_loaded(builder: str, loaded: LoadedWeights) -> nn.Module:
    """The network of `builder` holding the tensors of `loaded`: every name, every shape (strict). It is first
    built on the meta device (no memory) and compared with the file, so a config that does not fit the file's
    tensors allocates nothing."""
    arguments = network_arguments(builder, loaded.config, loaded.path)
    with torch.device("meta"):
        skeleton = build(builder, arguments)
    _check_state_fits(skeleton.state_dict(), loaded, builder)
    network = build(builder, arguments)
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
