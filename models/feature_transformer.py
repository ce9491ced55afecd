"""Feature Transformer: the source image's detail carried into G's features of the reenacted face.

    transformer = FeatureTransformer(channels=generator.channels[32], resolution=32, image_size=generator.size)
    images = transformer.render(generator, source_code, reenacted_codes, source_image)

An encoder's W+ code loses what G's latent space cannot say about a real face: background, hair, accessories,
identity detail. The IJCV version of the method refines G's intermediate feature maps for this (the paper's
"feature-space refinement"); the official code does not release it, so this module is the project's own design
of that idea, built on the hooks of `models.stylegan2.Generator` (`until`, `start_from`):

    g_s, g_r = G's block-k features of the source code and of the reenacted code     [B, C, R, R]
    residual = detail(x_s) - g_s              what G's own rendering of the source lacks, in G's feature space
    flow, gate = motion(g_s, g_r)             where each position of the reenacted face finds it in the source
    refined = g_r + gate * warp(residual, flow)
    image = G continued from block k with `refined` (and g_r's RGB skip)

`detail` is a small strided CNN from the source crop at G's resolution to R; `motion` a small CNN on the two
feature maps. Its last layers start at zero, so an untrained transformer renders exactly what G alone renders, and
training (`training/feature_transformer.py`, on two frames of one clip) only adds what helps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.stylegan2 import Generator


class SourceDetail(NamedTuple):
    """What the transformer needs of one source, the same for every frame it drives."""

    features: torch.Tensor  # g_s [1 or B, C, R, R]: G's block features of the source code
    residual: torch.Tensor  # detail(x_s) - g_s


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(0.2))


class FeatureTransformer(nn.Module):
    """Refines G's block features at `resolution` of reenacted codes with the detail of the source image."""

    def __init__(self, channels: int, resolution: int = 32, image_size: int = 256, hidden: int = 64):
        super().__init__()
        if image_size % resolution or not math.log2(image_size // resolution).is_integer():
            raise ValueError(f"the image size {image_size} must be the resolution {resolution} times a power of 2")
        self.channels, self.resolution, self.image_size, self.hidden = channels, resolution, image_size, hidden
        downs = int(math.log2(image_size // resolution))
        self.detail = nn.Sequential(_conv(3, hidden), *[_conv(hidden, hidden, stride=2) for _ in range(downs)],
                                    nn.Conv2d(hidden, channels, 1))
        self.motion = nn.Sequential(_conv(2 * channels, hidden), _conv(hidden, hidden), _conv(hidden, hidden))
        self.flow = nn.Conv2d(hidden, 2, 3, 1, 1)  # offsets in grid units ([-1, 1] spans the map)
        self.gate = nn.Conv2d(hidden, 1, 3, 1, 1)
        for head in (self.flow, self.gate):  # start as the identity: refined = g_r
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # grid_sample's coordinates of the unmoved map [1, R, R, 2], made once (not saved)
        identity = F.affine_grid(torch.eye(2, 3)[None], [1, 1, resolution, resolution], align_corners=False)
        self.register_buffer("identity_grid", identity, persistent=False)

    def config(self) -> dict[str, int]:
        """Constructor arguments (what an exported file records)."""
        return {"channels": self.channels, "resolution": self.resolution, "image_size": self.image_size,
                "hidden": self.hidden}

    def block(self, generator: Generator) -> int:
        """G's block that works at this transformer's resolution (its features are the ones refined)."""
        if generator.size != self.image_size or generator.channels[self.resolution] != self.channels:
            raise ValueError(f"this feature transformer fits a {self.image_size} px G with {self.channels} channels "
                             f"at {self.resolution} px; G is {generator.size} px with "
                             f"{generator.channels.get(self.resolution)} there")
        return generator.block_index(self.resolution)

    def forward(self, source_image: torch.Tensor, source_features: torch.Tensor,
                reenacted_features: torch.Tensor) -> torch.Tensor:
        """Refined features [B, C, R, R] from the source crop [B or 1, 3, S, S] in [-1, 1] and G's block features of
        the source code [B or 1, C, R, R] and of the reenacted codes [B, C, R, R]."""
        return self.refine(SourceDetail(source_features, self._detail(source_image) - source_features),
                           reenacted_features)

    def _detail(self, source_image: torch.Tensor) -> torch.Tensor:
        return self.detail(source_image.to(self.flow.weight.dtype))  # the crop in the transformer's dtype

    def source_detail(self, generator: Generator, source_code: torch.Tensor,
                      source_image: torch.Tensor) -> SourceDetail:
        """The per-source part of `render`, to compute once for all the frames one source drives."""
        block = self.block(generator)
        features = generator.synthesis(source_code, return_features=True, until=block).features[block].features
        return SourceDetail(features, self._detail(source_image) - features)

    def refine(self, source: SourceDetail, reenacted_features: torch.Tensor) -> torch.Tensor:
        """Refined features [B, C, R, R]: the source's residual warped to each reenacted face and gated in. The
        transformer computes in its own dtype and hands back G's (they differ while a bf16 reenactor tunes an
        fp32 copy of G)."""
        batch, dtype = len(reenacted_features), self.flow.weight.dtype
        features = reenacted_features.to(dtype)
        residual = source.residual.to(dtype).expand(batch, -1, -1, -1)
        motion = self.motion(torch.cat([source.features.to(dtype).expand(batch, -1, -1, -1), features], 1))
        flow = self.flow(motion).permute(0, 2, 3, 1)  # [B, R, R, 2], (x, y) as grid_sample reads them
        grid = self.identity_grid.to(dtype) + flow
        warped = F.grid_sample(residual, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return (features + self.gate(motion) * warped).to(reenacted_features.dtype)

    def render(self, generator: Generator, source_code: torch.Tensor, reenacted_codes: torch.Tensor,
               source_image: torch.Tensor, refine: nn.Module | None = None,
               source: SourceDetail | None = None) -> torch.Tensor:
        """Images [B, 3, size, size] of the reenacted W+ codes [B, L, D] with the source's detail, where
        `source_code` [1 or B, L, D] is the code G renders the source with and `source_image` its crop at G's size.
        `refine`: what runs this transformer's forward (its DDP wrapper when training on several processes).
        `source`: this source's `source_detail`, computed once (inference); training passes none, so that the
        detail encoder runs inside the forward that DDP watches."""
        block = self.block(generator)
        reenacted = generator.synthesis(reenacted_codes, return_features=True, until=block).features[block]
        if source is not None:
            refined = self.refine(source, reenacted.features)
        else:
            features = generator.synthesis(source_code, return_features=True, until=block).features[block].features
            refined = (refine or self)(source_image, features, reenacted.features)
        return generator.synthesis(reenacted_codes, start_from=(block, refined, reenacted.skip)).image
