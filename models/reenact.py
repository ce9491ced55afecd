"""One reenactment step of the paper: `w_reenact = w_source + A(Δp)`, then G.

    reenactor = Reenactor(generator, directions, ranges)
    images = reenactor(source_wplus, source_params, driving_params)      # [B, 3, 256, 256] in [-1, 1]

Δp is the driving face's parameters minus the source's, both first mapped to A's shift units by the ranges table
(`models.directions.delta_p`); A (a linear layer with a bias, as the official one) turns it into a shift of W+
layers 0..7 (`shift_wplus`), so layers 8..13 keep the source's appearance. The official inference then renders the
shifted code with truncation 0.7 towards G's mean w (`truncation`; 1 renders the code as it is). G uses its stored
noise maps, the same for every frame, so frames do not shimmer (the official inference draws fresh noise per frame).
With a Feature Transformer (`models.feature_transformer`) and the source crop, G's intermediate features are
refined with the source's detail before G finishes the image.
"""

from __future__ import annotations

import torch
from torch import nn

from models.directions import SHIFT_SCALE, DirectionMatrix, FaceParams, ParamRanges, delta_p, shift_wplus
from models.feature_transformer import FeatureTransformer, SourceDetail
from models.stylegan2 import Generator


class Reenactor(nn.Module):
    """G and A with the ranges table that maps face parameters to A's units."""

    def __init__(self, generator: Generator, directions: DirectionMatrix, ranges: ParamRanges,
                 shift_scale: float = SHIFT_SCALE, truncation: float = 1.0, mean_samples: int = 4096,
                 transformer: FeatureTransformer | None = None):
        super().__init__()
        if transformer is not None:
            transformer.block(generator)  # fits G, or a clear error
        if directions.w_plus and directions.num_layers > generator.n_latent:
            raise ValueError(f"A shifts {directions.num_layers} W+ layers; G has {generator.n_latent}")
        if not 0 < truncation <= 1:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        self.generator = generator
        self.directions = directions
        self.transformer = transformer
        self.ranges = ranges
        self.shift_scale = shift_scale
        self.truncation = truncation
        # the official `mean_latent(4096)`, from a fixed seed so that every run renders the same frames
        mean = generator.mean_latent(mean_samples, torch.Generator(generator.input.input.device).manual_seed(0)) \
            if truncation < 1 else torch.zeros(1, generator.style_dim, device=generator.input.input.device)
        self.register_buffer("mean_w", mean.unsqueeze(1), persistent=False)  # [1, 1, style_dim]

    def delta_p(self, source_params: torch.Tensor, driving_params: torch.Tensor) -> torch.Tensor:
        """Δp [B, 15] in shift units from face parameters [B or 1, 15] and [B, 15] (`PARAM_NAMES` order)."""
        source = source_params.expand_as(driving_params)
        return delta_p(FaceParams.from_vector(source), FaceParams.from_vector(driving_params), self.ranges,
                       self.shift_scale)

    def shifted_wplus(self, source_wplus: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The W+ codes G renders: source W+ [B or 1, L, D] moved by A(Δp [B, 15]), then truncated."""
        return self.truncate(shift_wplus(source_wplus.expand(len(delta), -1, -1), self.directions(delta)))

    def truncate(self, wplus: torch.Tensor) -> torch.Tensor:
        """W+ codes moved towards G's mean w by `truncation` (as they are when it is 1)."""
        return self.mean_w + self.truncation * (wplus - self.mean_w) if self.truncation < 1 else wplus

    def forward(self, source_wplus: torch.Tensor, source_params: torch.Tensor, driving_params: torch.Tensor,
                generator: Generator | None = None, source_image: torch.Tensor | None = None,
                refine: nn.Module | None = None, source_detail: SourceDetail | None = None) -> torch.Tensor:
        """Images [B, 3, size, size] of the source with the driving parameters (one source may serve B frames).

        generator: a G tuned to this source (`training.tune_generator`) instead of the shared one. source_image:
        the source crop at G's size [1 or B, 3, S, S] in [-1, 1]; with it and a Feature Transformer, G's features
        are refined with the source's detail (`refine`: the transformer's DDP wrapper when training;
        `source_detail`: `self.source_detail(...)` of this source and G, computed once for all its frames)."""
        wplus = self.shifted_wplus(source_wplus, self.delta_p(source_params, driving_params))
        generator = generator or self.generator
        if self.transformer is not None and source_image is not None:
            return self.transformer.render(generator, self.truncate(source_wplus), wplus, source_image, refine,
                                           source_detail)
        return generator.synthesis(wplus).image

    def source_detail(self, source_wplus: torch.Tensor, source_image: torch.Tensor,
                      generator: Generator | None = None) -> SourceDetail:
        """The Feature Transformer's per-source part for this source (and G), as `forward` would compute it."""
        return self.transformer.source_detail(generator or self.generator, self.truncate(source_wplus), source_image)
