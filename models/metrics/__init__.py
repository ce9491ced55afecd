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

from pathlib import Path

import torch

from models import MissingWeightsError


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
