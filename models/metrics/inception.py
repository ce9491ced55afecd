"""The Inception-v3 of FID: TensorFlow's 2015-12-05 graph as pytorch-fid ported it, 2048-d pool3 features.

It differs from torchvision's Inception-v3 in two ways that change every feature (pytorch-fid's `FIDInceptionA`,
`FIDInceptionC`, `FIDInceptionE_1`, `FIDInceptionE_2`): the pooling branch of the A, C and first E blocks averages
without counting the zero padding (TensorFlow's average pool), and the second E block max-pools there. Input
handling is pytorch-fid's: RGB in [0, 1], bilinear resize to 299x299 (align_corners=False, no antialias), then
2x - 1.

State-dict names are torchvision's `Inception3(num_classes=1008, aux_logits=False)`, into which pytorch-fid loads
`pt_inception-2015-12-05-6726825d.pth` strictly; `fc` (the 1008 ImageNet logits) is kept only so that the file loads
whole. The file is user-supplied (weights directory, or torch hub's checkpoints where pytorch-fid caches it) and
read by the weights registry (`fid-inception`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
FEATURES = 2048
Pool = Literal["tf-avg", "max"]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU (torchvision's)."""

    def __init__(self, inputs: int, outputs: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(outputs, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def pool_3x3(x: torch.Tensor, pool: Pool) -> torch.Tensor:
    """The pooling branch's 3x3, stride 1: TensorFlow's average (padding not counted) or max."""
    if pool == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _row_col(inputs: int, outputs: int, size: int, row_first: bool) -> BasicConv2d:
    """A 1 x size (row_first) or size x 1 convolution, padded to keep the resolution."""
    half = size // 2
    return BasicConv2d(inputs, outputs, (1, size) if row_first else (size, 1),
                       padding=(0, half) if row_first else (half, 0))


class InceptionA(nn.Module):
    def __init__(self, inputs: int, pool_features: int, pool: Pool = "tf-avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(inputs, 64, 1)
        self.branch5x5_1 = BasicConv2d(inputs, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(inputs, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(inputs, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(pool_3x3(x, self.pool)),
        ], 1)


class InceptionB(nn.Module):
    """The 35 -> 17 reduction."""

    def __init__(self, inputs: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(inputs, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(inputs, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, inputs: int, channels_7x7: int, pool: Pool = "tf-avg"):
        super().__init__()
        c7 = channels_7x7
        self.pool = pool
        self.branch1x1 = BasicConv2d(inputs, 192, 1)
        self.branch7x7_1 = BasicConv2d(inputs, c7, 1)
        self.branch7x7_2 = _row_col(c7, c7, 7, row_first=True)
        self.branch7x7_3 = _row_col(c7, 192, 7, row_first=False)
        self.branch7x7dbl_1 = BasicConv2d(inputs, c7, 1)
        self.branch7x7dbl_2 = _row_col(c7, c7, 7, row_first=False)
        self.branch7x7dbl_3 = _row_col(c7, c7, 7, row_first=True)
        self.branch7x7dbl_4 = _row_col(c7, c7, 7, row_first=False)
        self.branch7x7dbl_5 = _row_col(c7, 192, 7, row_first=True)
        self.branch_pool = BasicConv2d(inputs, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for k in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{k}")(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(pool_3x3(x, self.pool)),
        ], 1)


class InceptionD(nn.Module):
    """The 17 -> 8 reduction."""

    def __init__(self, inputs: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(inputs, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(inputs, 192, 1)
        self.branch7x7x3_2 = _row_col(192, 192, 7, row_first=True)
        self.branch7x7x3_3 = _row_col(192, 192, 7, row_first=False)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = x
        for k in range(1, 5):
            seven = getattr(self, f"branch7x7x3_{k}")(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven,
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, inputs: int, pool: Pool = "tf-avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(inputs, 320, 1)
        self.branch3x3_1 = BasicConv2d(inputs, 384, 1)
        self.branch3x3_2a = _row_col(384, 384, 3, row_first=True)
        self.branch3x3_2b = _row_col(384, 384, 3, row_first=False)
        self.branch3x3dbl_1 = BasicConv2d(inputs, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _row_col(384, 384, 3, row_first=True)
        self.branch3x3dbl_3b = _row_col(384, 384, 3, row_first=False)
        self.branch_pool = BasicConv2d(inputs, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pool_3x3(x, self.pool)),
        ], 1)


class FIDInception(nn.Module):
    """Images [B, 3, H, W] in [0, 1] -> pool3 features [B, 2048] (pytorch-fid's `InceptionV3([3])`)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURES, 1008)  # unused: only so that the official file loads whole
        self.name = "fid-inception-2015-12-05"
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{block}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def load_official(self, state: Mapping[str, torch.Tensor]) -> None:
        """pt_inception-2015-12-05's state dict, strictly. Batch-norm counters are optional (files saved before
        they existed lack them; torch fills them the same way for such files); every weight must be there."""
        counters = {name: value for name, value in self.state_dict().items()
                    if name.endswith("num_batches_tracked") and name not in state}
        self.load_state_dict({**state, **counters}, strict=True)


def build_fid_inception(state: Mapping[str, torch.Tensor] | None = None, random_weights: bool = False,
                        device: str | torch.device | None = None) -> FIDInception:
    """The FID Inception in eval mode holding `state`, the official state dict (the caller's weights registry reads
    it: `storage.networks.fid_inception`). `random_weights=True` (tests, timing) gives features that are not FID's,
    and `name` says so."""
    network = FIDInception()
    if random_weights:
        network.name += "-random-weights"
    elif state is None:
        raise TypeError("the FID Inception needs its state dict (storage.networks.fid_inception(registry) reads it), "
                        "or random_weights=True for tests")
    else:
        network.load_official(state)
    return network.to(device or "cpu")
