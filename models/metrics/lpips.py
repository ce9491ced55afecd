"""LPIPS (Zhang et al., CVPR 2018), AlexNet trunk, version 0.1: the numbers of the `lpips` package, in plain torch.

    distance(a, b) = sum over l of mean over (h, w) of  w_l . (f_l(a) - f_l(b))**2

where f_l are the channel-normalised AlexNet activations after relu1..relu5 of both images, shifted and scaled first
by the package's `ScalingLayer`, and w_l the 1x1 linear heads of v0.1. Images are RGB in [-1, 1], [B, 3, H, W].

State-dict names are the official ones: `features.<i>.*` as in torchvision's AlexNet (its ImageNet file
`alexnet-owt-7be5be79.pth` loads strictly: the `classifier.*` entries that LPIPS never uses are dropped after their
names are checked), `lin<l>.model.1.weight` as in the heads file `lpips/weights/v0.1/alex.pth`, which ships inside
the installed `lpips` wheel (the weights registry's `lpips-heads`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

CHANNELS = (64, 192, 384, 256, 256)  # relu1..relu5
TAPS = (1, 4, 7, 9, 11)  # indices in `features` of relu1..relu5 (the lpips package's slice ends)
SHIFT = (-0.030, -0.088, -0.188)  # lpips.ScalingLayer: (x - shift) / scale
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor


def alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet `features` up to relu5 (indices kept, so its state-dict names are torchvision's)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
    )


class LinearHead(nn.Module):
    """lpips.NetLinLayer: a 1x1 convolution to one channel; index 0 is the (eval-time no-op) dropout of training."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def unit_channels(features: torch.Tensor) -> torch.Tensor:
    """Each position's feature vector divided by its L2 norm (lpips.normalize_tensor, same epsilon)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """The LPIPS distance of image pairs; `name` goes beside every figure (a random trunk is named as such)."""

    def __init__(self):
        super().__init__()
        self.features = alexnet_features()
        for layer, channels in enumerate(CHANNELS):
            self.add_module(f"lin{layer}", LinearHead(channels))
        # constants, not weights: kept out of the state dict so both official files cover it exactly
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.name = "lpips-alex-v0.1"
        self.requires_grad_(False)
        self.eval()

    def heads(self) -> list[LinearHead]:
        return [getattr(self, f"lin{layer}") for layer in range(len(CHANNELS))]

    def activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        """relu1..relu5 of images in [-1, 1], after the scaling layer."""
        x = (images - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(x)
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[B] distances of two image batches [B, 3, H, W] in [-1, 1] (0 for identical images)."""
        # one pass over both halves: the same arithmetic per image, half the kernel launches
        taps = self.activations(torch.cat([a, b]))
        distance = a.new_zeros(len(a))
        for head, features in zip(self.heads(), taps):
            first, second = unit_channels(features).chunk(2)
            distance = distance + head((first - second).pow(2)).mean(dim=(1, 2, 3))
        return distance

    def load_heads(self, state: Mapping[str, torch.Tensor]) -> None:
        """The v0.1 heads file (`lin<l>.model.1.weight`), every entry, nothing else."""
        self.load_state_dict({**self._backbone_state(), **state}, strict=True)

    def load_backbone(self, state: Mapping[str, torch.Tensor]) -> None:
        """torchvision's AlexNet state dict: its `features.*` strictly; `classifier.*` is checked by name and dropped."""
        others = sorted(name for name in state if not name.startswith(("features.", "classifier.")))
        if others:
            raise KeyError(f"not an AlexNet state dict (torchvision layout): unexpected {others[:5]}")
        features = {name: value for name, value in state.items() if name.startswith("features.")}
        self.load_state_dict({**features, **self._heads_state()}, strict=True)

    def _backbone_state(self) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self.state_dict().items() if name.startswith("features.")}

    def _heads_state(self) -> dict[str, torch.Tensor]:
        return {name: value for name, value in self.state_dict().items() if name.startswith("lin")}


def build_lpips(heads: Mapping[str, torch.Tensor], backbone: Mapping[str, torch.Tensor] | None = None,
                random_backbone: bool = False, device: str | torch.device | None = None) -> LPIPS:
    """LPIPS with the v0.1 `heads` and the ImageNet trunk `backbone` (torchvision's AlexNet state dict), in eval
    mode; the caller's weights registry reads both (`storage.networks.lpips`). `random_backbone=True` keeps the
    constructor's random trunk, for tests and timing only: its distances are not LPIPS, and `name` says so."""
    network = LPIPS()
    network.load_heads(heads)
    if random_backbone:
        network.name += "-random-backbone"
    elif backbone is None:
        raise TypeError("LPIPS needs its AlexNet trunk: backbone= torchvision's ImageNet AlexNet state dict "
                        "(storage.networks.lpips(registry) reads it), or random_backbone=True for tests")
    else:
        network.load_backbone(backbone)
    return network.to(device or "cpu")
