"""The run directory, its checkpoints, and the RNG states that make a resumed run the same as an unbroken one.

    <out>/
      config.json                       the resolved config of the run (the latest start; each checkpoint has its own)
      checkpoints/step-0001000.pt       the official dict layout of the stage (generator: 'g', 'd', 'g_ema',
                                        'g_optim', 'd_optim' as rosinality's train.py writes; encoder: 'e', 'e_optim')
                                        plus what resuming needs: 'step', 'config', 'rng' (per rank), 'scalers',
                                        'networks' (constructor arguments) and the stage's own entries
      checkpoints/step-0001000.safetensors  the exported network (g_ema / e), fp32, with its constructor arguments
                                        under metadata 'config', so `storage.weights` builds it without a table
      <stage>.safetensors               the final export in `export_dtype` (fp16 by default): the demo weights' form
      stats.jsonl, tensorboard/, samples/, summary.json

A checkpoint's safetensors is written first and its .pt last, both atomically, so a .pt on disk means a complete
checkpoint: `latest_checkpoint` only looks at .pt files. Checkpoints are read back with the weights-only unpickler
(`storage.checkpoints.load_checkpoint`), which is why every entry is tensors and plain data; the constructor
arguments they record (and those of any file training starts from) are checked against the weights registry's
allow-list (`storage.weights.network_arguments`) before a network is built from them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from storage.checkpoints import load_checkpoint, load_safetensors, save_safetensors, split_checkpoint
from storage.files import atomic_path
from storage.weights import (WEIGHT_FILES, NetworkArgumentsError, WeightsRegistry, builder_for_key, builder_of,
                             file_entries, network_arguments)

_STEP = re.compile(r"^step-(\d+)\.pt$")


@dataclass(frozen=True)
class RunDir:
    """The files of one training run."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def stats(self) -> Path:
        return self.root / "stats.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}.pt"

    def export(self, stage: str) -> Path:
        return self.root / f"{stage}.safetensors"


@dataclass(frozen=True)
class Export:
    """The network a stage hands to the weights registry: its module, how to build it, and its official key."""

    network: nn.Module
    builder: str  # "module:Callable", as in storage.weights
    config: dict[str, Any]  # constructor arguments
    key: str  # the entry of the official checkpoint that holds it ('g_ema', 'e')
    entries: dict[str, Any] = field(default_factory=dict)  # plain values the registry hands out (A's shift_scale)


def checkpoint_step(path: Path) -> int:
    match = _STEP.match(path.name)
    if not match:
        raise ValueError(f"{path} is not a training checkpoint (step-NNNNNNN.pt)")
    return int(match.group(1))


def list_checkpoints(run: RunDir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not run.checkpoints.is_dir():
        return []
    return sorted((p for p in run.checkpoints.iterdir() if _STEP.match(p.name)), key=checkpoint_step)


def latest_checkpoint(run: RunDir) -> Path | None:
    found = list_checkpoints(run)
    return found[-1] if found else None


def save_checkpoint(run: RunDir, step: int, entries: Mapping[str, Any], export: Export,
                    metadata: Mapping[str, Any], keep: int) -> Path:
    """Write step `step`'s safetensors then its .pt (atomically), and drop all but the newest `keep` checkpoints."""
    path = run.checkpoint(step)
    save_export(export, path.with_suffix(".safetensors"), torch.float32, {**metadata, "step": step})
    with atomic_path(path) as partial:
        torch.save(dict(entries), partial)
    if keep:
        for old in list_checkpoints(run)[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
    return path


def save_export(export: Export, path: Path, dtype: torch.dtype, metadata: Mapping[str, Any]) -> Path:
    """The network as safetensors: floating tensors in `dtype`, constructor arguments under 'config'."""
    state = {name: value.to(dtype) if value.is_floating_point() else value
             for name, value in export.network.state_dict().items()}
    save_safetensors(state, path, {"config": export.config, "builder": export.builder, "state_key": export.key,
                                   "entries": export.entries, **metadata})
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint's entries, read weights-only (tensors on the CPU), its recorded constructor arguments
    ('networks') checked: each is a network of the allow-list with known, plain, bounded arguments."""
    checkpoint = load_checkpoint(path)
    if "networks" in checkpoint:
        checkpoint["networks"] = _checked_networks(checkpoint["networks"], path)
    return checkpoint


def _checked_networks(networks: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(networks, Mapping):
        raise NetworkArgumentsError(f"{path}: 'networks' must map checkpoint keys to constructor arguments")
    return {key: network_arguments(builder_for_key(str(key), path).target, config, f"{path} ['networks'][{key!r}]")
            for key, config in networks.items()}


# --------------------------------------------------------------------------------------- weights to start from

@dataclass(frozen=True)
class SourceWeights:
    """A network's state read from a registry name or a file, and the constructor arguments the file records."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any]  # {} when the file does not say
    path: Path
    others: dict[str, dict[str, torch.Tensor]]  # other state dicts of an official .pt ('g', 'd', ...), by key


def read_weights(spec: str, key: str | None, weights_dir: str | None = None) -> SourceWeights:
    """The state dict under `key` (None: the file is a bare state dict) from `spec`: a weights-registry name (e.g.
    'stylegan2-voxceleb256'), a
    .safetensors file (ours: constructor arguments in its metadata) or a .pt in the official layout (read
    weights-only; its other state dicts come along, e.g. 'd' to fine-tune a discriminator)."""
    if spec in WEIGHT_FILES:
        registry = WeightsRegistry(weights_dir)
        path, default = registry.path(spec), dict(registry.entry(spec).config)
    else:
        path, default = Path(spec), {}
        if not path.is_file():
            raise FileNotFoundError(f"{spec!r} is neither a weights-registry name ({', '.join(WEIGHT_FILES)}) "
                                    f"nor a file")
    if path.suffix == ".safetensors":
        state, metadata = load_safetensors(path)
        config = {**default, **metadata.get("config", {})}
        if config:  # checked against the network the file says it holds, else the one its key names
            config = network_arguments(_builder_of_file(metadata, key, path), config, path)
        file_entries(metadata.get("entries", {}), path)
        return SourceWeights(state, config, path, {})
    return _from_official(path, key, default)


def _builder_of_file(metadata: Mapping[str, Any], key: str | None, path: Path) -> str:
    if "builder" in metadata:
        return builder_of(metadata["builder"], path).target
    if key:
        return builder_for_key(key, path).target
    raise NetworkArgumentsError(f"{path} records constructor arguments but no 'builder' to check them against")


def _from_official(path: Path, key: str | None, config: dict[str, Any]) -> SourceWeights:
    checkpoint = read_checkpoint(path)
    state, _ = split_checkpoint(checkpoint, key, (), path)
    networks = checkpoint.get("networks")
    if key and isinstance(networks, Mapping) and isinstance(networks.get(key), Mapping):
        config = dict(networks[key])  # our own checkpoints record every network's constructor arguments (checked)
    others = {name: dict(value) for name, value in checkpoint.items()
              if key and name != key and isinstance(value, Mapping) and value
              and all(isinstance(v, torch.Tensor) for v in value.values())}
    return SourceWeights(state, config, path, others)


def load_into(network: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """`load_state_dict(strict=True)` with a message that says which file does not fit which network."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{what} does not fit the configured network (check size, style_dim, channel_multiplier, "
                         f"channel_max): {str(error).splitlines()[0]} ...") from None


# ------------------------------------------------------------------------------------------------- RNG states

def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generators (python, numpy's global, torch CPU and the CUDA device) as plain data."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": (kind, keys.tolist(), int(position), int(has_gauss), float(gauss))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
