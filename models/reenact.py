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

How fast it runs is a `RenderPath` (`reenactor.use_render_path(RenderPath.for_device("bf16", device))`): the
networks' dtype (`models.precision`), G's fast ops (`Generator.use_fast_ops`), channels-last memory, and
`reenactor.compiled()` for torch.compile with CUDA graphs. Every constant of the forward (the ranges table's map,
the mean w) is a device tensor, so the forward makes no host round trip and compiles as one graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models.directions import SHIFT_SCALE, DirectionMatrix, ParamRanges, ShiftMap, shift_wplus
from models.feature_transformer import FeatureTransformer, SourceDetail
from models.precision import Precision, cast_networks
from models.stylegan2 import Generator


@dataclass(frozen=True)
class RenderPath:
    """How the Reenactor's networks run. The default is the reference path (fp32, eager, StyleGAN2's ops as the
    official code orders them): bit for bit what the parity tests check. The others give the same images up to
    their precision's rounding (tests/models/test_fast_render.py states the tolerances)."""

    precision: Precision = "fp32"
    fast_ops: bool = False  # G's equivalent fast forms (`Generator.use_fast_ops`): FIR, epilogue, skip up-sampling
    channels_last: bool = False  # feature maps in NHWC order (with fast_ops)
    fir: str = "separate"  # with fast_ops: the up-sampling blur "separate", "folded" into the convolution, "taps"

    @classmethod
    def for_device(cls, precision: Precision, device: torch.device | str) -> RenderPath:
        """What `precision` means on `device`: on a GPU, bf16 / fp16 are the networks cast to that dtype with the fast
        ops in channels-last memory (fp32 stays the reference path); a CPU always takes the reference fp32 path.
        The up-sampling blur stays its own pass: folding it in costs four times those convolutions' arithmetic
        (0.3-0.7x the frames/s on a CPU); whether that pays on a GPU is for benchmarks/gpu.py there to say."""
        if torch.device(device).type != "cuda" or precision == "fp32":
            return cls()
        return cls(precision, fast_ops=True, channels_last=True)


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
        self.shift_scale = shift_scale
        self.truncation = truncation
        device = generator.input.input.device
        self.shift_map = ShiftMap(ranges, shift_scale).to(device)
        # the official `mean_latent(4096)`, from a fixed seed so that every run renders the same frames
        mean = generator.mean_latent(mean_samples, torch.Generator(device).manual_seed(0)).float() \
            if truncation < 1 else torch.zeros(1, generator.style_dim, device=device)
        self.register_buffer("mean_w", mean.unsqueeze(1), persistent=False)  # [1, 1, style_dim]
        self.render_path = RenderPath()

    @property
    def ranges(self) -> ParamRanges:
        """The table that maps face parameters to A's units (setting it replaces the map's device tensors)."""
        return self.shift_map.ranges

    @ranges.setter
    def ranges(self, ranges: ParamRanges) -> None:
        self.shift_map = ShiftMap(ranges, self.shift_scale).to(self.mean_w.device)

    def use_render_path(self, path: RenderPath) -> Reenactor:
        """Run G and the Feature Transformer as `path` says: cast to its precision (A, Δp and the truncation stay
        fp32: a few thousand numbers a frame), with or without G's fast ops. Returns the Reenactor; images come out
        in the networks' dtype."""
        cast_networks(path.precision, self.generator, self.transformer)
        self.generator.use_fast_ops(path.fast_ops, path.channels_last, path.fir)
        self.render_path = path
        return self

    def compiled(self, cuda_graphs: bool = False, backend: str = "inductor") -> Callable[..., torch.Tensor]:
        """This Reenactor's forward under torch.compile as one graph (fullgraph: a graph break is an error; inductor
        fuses the elementwise work around the convolutions). `cuda_graphs`: replay the whole forward as one CUDA
        graph (mode "reduce-overhead": a fixed batch size, and each call's images are overwritten by a later call,
        so copy what you keep); ignored off CUDA. Call it as the Reenactor, with the source's detail passed in
        (`source_detail`) when a Feature Transformer refines. `backend="eager"` only captures the graph (a quick
        check that the forward has no host round trip)."""
        graphs = cuda_graphs and backend == "inductor" and self.mean_w.device.type == "cuda"
        return torch.compile(self, fullgraph=True, dynamic=False, backend=backend,
                             mode="reduce-overhead" if graphs else None)

    def delta_p(self, source_params: torch.Tensor, driving_params: torch.Tensor) -> torch.Tensor:
        """Δp [B, 15] in shift units from face parameters [B or 1, 15] and [B, 15] (`PARAM_NAMES` order)."""
        return self.shift_map.delta(source_params.expand_as(driving_params), driving_params)

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
