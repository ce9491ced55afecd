"""IR and IR-SE residual networks: the ArcFace backbone, also the trunk of pSp/e4e encoders.

One implementation for both users, with the module names of TreB1eN/InsightFace_Pytorch (copied into pSp, e4e
and the reenactment code as `helpers.py`), so that their checkpoints load with `strict=True`:

    input_layer   Conv3x3(3, 64) - BatchNorm - PReLU
    body.i        one bottleneck unit each: `shortcut_layer` + `res_layer`
                  res_layer = BN - Conv3x3 - PReLU - Conv3x3(stride) - BN [- SE (fc1, fc2)]

The body has four stages of 64, 128, 256 and 512 channels; the first unit of every stage halves the resolution.
"""

from __future__ import annotations

from itertools import accumulate
from typing import NamedTuple

import torch
from torch import nn

STAGE_DEPTHS = (64, 128, 256, 512)
# 18 is not in the official code: a short trunk for small encoders (insightface's iresnet18 has the same units)
UNITS_PER_STAGE = {18: (2, 2, 2, 2), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
MODES = ("ir", "ir_se")


class UnitSpec(NamedTuple):
    """One bottleneck unit of the body."""

    in_channel: int
    depth: int
    stride: int


def stage_depths(channel_max: int = 512) -> tuple[int, ...]:
    """The four stages' channels, each at most `channel_max` (a narrow trunk for small encoders; 512: the official)."""
    return tuple(min(depth, channel_max) for depth in STAGE_DEPTHS)


def unit_specs(num_layers: int, depths: tuple[int, ...] = STAGE_DEPTHS) -> list[UnitSpec]:
    """The body's units in order: each stage starts with a stride-2 unit that changes the depth."""
    if num_layers not in UNITS_PER_STAGE:
        raise ValueError(f"num_layers must be one of {sorted(UNITS_PER_STAGE)}, got {num_layers}")
    specs = []
    in_channel = depths[0]
    for depth, units in zip(depths, UNITS_PER_STAGE[num_layers]):
        specs.append(UnitSpec(in_channel, depth, 2))
        specs += [UnitSpec(depth, depth, 1)] * (units - 1)
        in_channel = depth
    return specs


def stage_ends(num_layers: int) -> tuple[int, ...]:
    """Index in `body` of the last unit of each stage (for IR-50: 2, 6, 20, 23)."""
    return tuple(end - 1 for end in accumulate(UNITS_PER_STAGE[num_layers]))


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(fc2(relu(fc1(mean over space of x))))."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIR(nn.Module):
    """Improved residual unit (pre-activation BN, PReLU), optionally with squeeze-and-excitation."""

    def __init__(self, in_channel: int, depth: int, stride: int, squeeze_excite: bool):
        super().__init__()
        if in_channel == depth:
            # a 1x1 max-pool with a stride is plain subsampling: no weights on the identity path
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        residual = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if squeeze_excite:
            residual.append(SqueezeExcite(depth, 16))
        self.res_layer = nn.Sequential(*residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def input_layer(channels: int = STAGE_DEPTHS[0]) -> nn.Sequential:
    """The stem: RGB to 64 channels (the first stage's depth) at full resolution."""
    return nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.PReLU(channels))


def ir_body(num_layers: int = 50, mode: str = "ir_se", depths: tuple[int, ...] = STAGE_DEPTHS) -> nn.Sequential:
    """The residual body; `mode` 'ir_se' adds squeeze-and-excitation to every unit."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return nn.Sequential(
        *(BottleneckIR(*spec, squeeze_excite=mode == "ir_se") for spec in unit_specs(num_layers, depths))
    )
