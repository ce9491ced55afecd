"""e4e, the encoder that inverts a face into the generator's W+ (Tov et al., "Designing an Encoder for StyleGAN
Image Manipulation", 2021), as the reenactment code builds it: `Encoder4Editing(50, 'ir_se', 256)`.

    image 256x256 -> IR-SE-50 body; the ends of stages 2, 3 and 4 are c1 (128 ch, 64x64), c2 (256 ch, 32x32),
                     c3 (512 ch, 16x16)
    feature pyramid:  p2 = up(c3) + latlayer1(c2),  p1 = up(p2) + latlayer2(c1)
    W+ [B, 14, 512]:  w0 = styles[0](c3) on every layer, plus a delta per layer i >= 1 from
                      styles[i] of c3 (i < 3), p2 (i < 7) or p1 (the rest)

Each `styles[i]` is a GradualStyleBlock: stride-2 convolutions down to 1x1, then an equalised linear layer. The
official checkpoint `e4e-voxceleb.pt` holds this network's state dict under the key 'e'.

Three options beyond the official constructor, for the project's small demo encoder (defaults are the official
network): `style_dim` (the generator's), `channel_max` (caps the trunk's stages, the pyramid and the style blocks),
`input_size` (the resolution the network reads; other inputs are resized to it, so it still takes 256 crops).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.irse import input_layer, ir_body, stage_depths, stage_ends
from models.stylegan2 import EqualLinear

CHECKPOINT_KEY = "e"
STYLE_DIM = 512
COARSE_END, MIDDLE_END = 3, 7  # styles [0, 3) read c3 (16x16), [3, 7) p2 (32x32), [7, 14) p1 (64x64)


class GradualStyleBlock(nn.Module):
    """A spatial x spatial feature map to one style (512-d in the official network): log2(spatial) stride-2
    convolutions, then EqualLinear."""

    def __init__(self, in_channel: int, out_channel: int, spatial: int, style_dim: int | None = None):
        super().__init__()
        self.out_channel = out_channel
        layers: list[nn.Module] = []
        for index in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_channel if index == 0 else out_channel, out_channel, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channel, style_dim or out_channel, lr_mul=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(features).view(-1, self.out_channel))


def upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """The feature pyramid's merge: `top` resized bilinearly (corners aligned) to `lateral`, plus `lateral`."""
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class Encoder4Editing(nn.Module):
    """Images [B, 3, input_size, input_size] in [-1, 1] to W+ codes [B, 2*log2(size) - 2, style_dim] of a
    generator of `size` px."""

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", size: int = 256, style_dim: int = STYLE_DIM,
                 channel_max: int = 512, input_size: int = 256):
        super().__init__()
        depths = stage_depths(channel_max)
        width = depths[-1]
        self.input_size = input_size
        self.input_layer = input_layer(depths[0])
        self.body = ir_body(num_layers, mode, depths)
        self.style_count = 2 * int(math.log2(size)) - 2
        self.style_dim = style_dim
        # c3, p2, p1 are 1/16, 1/8, 1/4 of the input (16, 32, 64 for the official 256)
        self.styles = nn.ModuleList(
            GradualStyleBlock(width, width, input_size // (16 if i < COARSE_END else 8 if i < MIDDLE_END else 4),
                              style_dim)
            for i in range(self.style_count)
        )
        self.latlayer1 = nn.Conv2d(depths[2], width, kernel_size=1)
        self.latlayer2 = nn.Conv2d(depths[1], width, kernel_size=1)
        self.taps = stage_ends(num_layers)[1:]  # c1, c2, c3
        # e4e trains its deltas progressively; layers above this stage get w0 alone. Default: all (inference).
        self.progressive_stage = self.style_count - 1

    def pyramid_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The body's feature maps c1, c2, c3 (fine to coarse)."""
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, (self.input_size, self.input_size), mode="bilinear", antialias=True)
        x = self.input_layer(images)
        tapped = []
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index in self.taps:
                tapped.append(x)
        c1, c2, c3 = tapped
        return c1, c2, c3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.pyramid_inputs(images)
        w0 = self.styles[0](c3)
        codes, features = [w0], c3
        for i in range(1, self.style_count):
            if i > self.progressive_stage:
                codes.append(w0)
                continue
            if i == COARSE_END:
                features = p2 = upsample_add(c3, self.latlayer1(c2))
            elif i == MIDDLE_END:
                features = upsample_add(p2, self.latlayer2(c1))
            codes.append(w0 + self.styles[i](features))
        return torch.stack(codes, dim=1)
