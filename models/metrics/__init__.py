"""The networks and the pure arithmetic behind the evaluation metrics, shared by evaluation and training validation.

    from models.metrics.lpips import build_lpips              # LPIPS (AlexNet, v0.1), the `lpips` package's numbers
    from models.metrics.inception import build_fid_inception  # pytorch-fid's Inception-v3, 2048-d pool3 features
    from models.metrics.fid import FeatureStatistics, frechet_distance, kernel_inception_distance

Their weights are the standard public files under their own names, read weights-only: the ImageNet AlexNet of
torchvision (`alexnet-owt-7be5be79.pth`) and pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, each from the
weights directory or from torch hub's checkpoint folder, where torchvision and pytorch-fid keep what they download
(`find_checkpoint`). LPIPS's linear heads ship inside the `lpips` wheel. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from models import MissingWeightsError

Network = TypeVar("Network", bound=nn.Module)


def checkpoint_candidates(filename: str, weights_dir: str | Path | None) -> list[Path]:
    """Where a standard file may be: `<weights_dir>/<filename>`, then torch hub's `<hub dir>/checkpoints/<filename>`
    ($TORCH_HOME/hub, else ~/.cache/torch/hub)."""
    hub = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return ([Path(weights_dir) / filename] if weights_dir is not None else []) + [hub]


def find_checkpoint(filename: str, weights_dir: str | Path | None, needed_for: str, where_to_get: str) -> Path:
    """The first existing candidate of `checkpoint_candidates`; `MissingWeightsError` naming every path tried."""
    candidates = checkpoint_candidates(filename, weights_dir)
    for path in candidates:
        if path.is_file():
            return path
    tried = " or ".join(str(path) for path in candidates)
    raise MissingWeightsError(f"{needed_for} needs {filename}, not found at {tried}: {where_to_get}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A bare state dict, read weights-only on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_standard_or_keep_random(network: Network, load: Callable[[Mapping[str, torch.Tensor]], None],
                                 filename: str, weights_dir: str | Path | None, needed_for: str, where_to_get: str, *,
                                 state: Mapping[str, torch.Tensor] | None, keep_random: bool,
                                 random_suffix: str) -> Network:
    """`network` after `load(state)`: `state` as given (the caller's weights registry read it), else the standard
    file from `find_checkpoint` (same arguments). `keep_random=True` loads nothing and appends `random_suffix` to
    `network.name`, so that no figure from random weights passes for the metric's."""
    if keep_random:
        network.name += random_suffix
        return network
    if state is None:
        state = read_state_dict(find_checkpoint(filename, weights_dir, needed_for, where_to_get))
    load(state)
    return network
