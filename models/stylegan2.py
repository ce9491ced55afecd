"""StyleGAN2 (Karras et al. 2020) in the layout of rosinality/stylegan2-pytorch, as the reenactment paper uses it.

State-dict names are exactly those of the official checkpoints (`stylegan-voxceleb.pt['g_ema']`, 256 px, channel
multiplier 1, W+ = 14 x 512), so they load with `strict=True`. The modules read top-down like the paper:
equalised-learning-rate layers, the mapping network z -> w, modulated convolutions with weight demodulation,
noise injection, the skip-connection generator and the residual discriminator.

Two additions over rosinality's generator, both for feature-space editing: `Generator.synthesis` can return the
feature map and skip image of every block, and can resume from given ones (see `Generator` for the indexing).
The official code's default `randomize_noise=False` is kept: the stored noise maps make outputs deterministic.

`Generator.use_fast_ops()` switches G to equivalent forms of the same maths for fast inference (the reference
path, the parity-tested one, stays the default): the FIR blur of each up-sampling convolution as its own pass
(`fir="separate"`), folded into one transposed convolution (`"folded"`: no FIR pass, four times that
convolution's multiply-adds) or as shifted slices that torch.compile fuses (`"taps"`), the skip image's FIR
up-sampling as a strided depthwise transposed convolution, and demodulation, noise, bias and activation as one
epilogue (`models.ops`). G runs in whatever dtype its weights have (`models.precision`): its
input codes and noise maps are cast to it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.ops import (FusedLeakyReLU, fir_taps, fold_fir, fused_leaky_relu, make_kernel, modulated_epilogue,
                        transposed_padding, upfirdn2d, upsample_transposed)

FIR_FORMS = ("separate", "folded", "taps")  # the fast path's forms of the up-sampling convolutions' blur

BLUR_KERNEL = (1, 3, 3, 1)


def channels_for(channel_multiplier: int, channel_max: int = 512) -> dict[int, int]:
    """Feature channels per resolution: 512 up to 32 px, then halving, scaled by the channel multiplier, and at
    most `channel_max` (NVlabs' name; a narrow network for small demo weights, 512 leaves the official widths)."""
    m = channel_multiplier
    full = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * m, 128: 128 * m, 256: 64 * m, 512: 32 * m, 1024: 16 * m}
    return {resolution: min(channels, channel_max) for resolution, channels in full.items()}


def _check_size(size: int) -> int:
    """log2(size) for a supported image size."""
    log_size = int(math.log2(size))
    if size < 8 or size > 1024 or 2 ** log_size != size:
        raise ValueError(f"size must be a power of two in [8, 1024], got {size}")
    return log_size


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root mean square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


# --- FIR resampling --------------------------------------------------------------------------------------------------

class Upsample(nn.Module):
    """2x upsampling with the FIR kernel (scaled by factor² to keep the signal's level after zero insertion)."""

    def __init__(self, kernel: Sequence[int], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.fast = False  # `Generator.use_fast_ops`: a strided transposed convolution, no zero insertion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and self.factor == 2 and self.pad[1] == self.pad[0] - 1:
            return upsample_transposed(x, self.kernel, self.pad)
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class Blur(nn.Module):
    """The FIR low-pass filter around a strided (down) or transposed (up) convolution."""

    def __init__(self, kernel: Sequence[int], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor ** 2)
        self.pad = pad
        # the 1-D factor of a separable kernel (its outer product is `kernel`), as constants for `fir_taps`
        one_d = all(isinstance(v, (int, float)) for v in kernel)
        self.taps = tuple(float(v) * upsample_factor / sum(kernel) for v in kernel) if one_d else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


# --- Equalised learning rate -------------------------------------------------------------------------------------------

class EqualConv2d(nn.Module):
    """Conv2d whose N(0, 1) weights are scaled by 1/sqrt(fan_in) at run time (equalised learning rate)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; `lr_mul` slows it down (the mapping network uses 0.01).

    With `activation` set, the bias goes through the fused leaky ReLU instead of the linear map.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)


class ScaledLeakyReLU(nn.Module):
    """leaky_relu * sqrt(2) without a bias (the discriminator's layers built with bias=False)."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope) * math.sqrt(2)


# --- Generator building blocks -----------------------------------------------------------------------------------------

class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled per sample by an affine map of the style (modulation), with the
    output channels renormalised to unit expected variance (demodulation). Optional 2x up- or down-sampling."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, downsample: bool = False, blur_kernel: Sequence[int] = BLUR_KERNEL):
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.downsample = downsample
        factor = 2
        if upsample:
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        if downsample:
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)  # styles start as the identity scale
        self.demodulate = demodulate
        # `Generator.use_fast_ops`: the up-sampling blur as its own pass, folded into the transposed convolution
        # (when it fits), or as shifted slices
        self.fast = False
        self.fir = "separate"
        self.folded_padding = transposed_padding(len(blur_kernel), self.blur.pad) if upsample else None

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        out, demodulation = self.undemodulated(x, style)
        return out if demodulation is None else out * demodulation[:, :, None, None]

    def undemodulated(self, x: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution and, when it is still to be applied, its demodulation [B, out] (None: done, or none)."""
        style = self.modulation(style)  # [B, in_channel]
        if len(x) == 1:
            return self._grouped(x, style), None
        return self._shared(x, style)

    def _folded(self) -> bool:
        return self.fast and self.fir == "folded" and self.upsample and self.folded_padding is not None

    def _upsampled(self, x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """Transposed convolution of stride 2 with `weight` [in, out, k, k] and the FIR blur: two passes, one
        with the blur folded into the weights, or the blur as shifted slices."""
        if self._folded():
            return F.conv_transpose2d(x, fold_fir(weight, self.blur.kernel), stride=2, padding=self.folded_padding,
                                      groups=groups)
        out = F.conv_transpose2d(x, weight, stride=2, groups=groups)
        if self.fast and self.fir == "taps" and self.blur.taps is not None:
            return fir_taps(out, self.blur.taps, self.blur.pad)
        return self.blur(out)

    def _grouped(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """The official computation: each sample's modulated weights, all samples in one grouped convolution."""
        batch, in_channel, height, width = x.shape
        weight = self.scale * self.weight * style.view(batch, 1, in_channel, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        k = self.kernel_size
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            if self.fast:  # the blur works per channel: on [1, B * out] as on [B, out]
                out = self._upsampled(x.reshape(1, batch * in_channel, height, width), weight, groups=batch)
                return out.view(batch, self.out_channel, *out.shape[2:])
            out = F.conv_transpose2d(x.reshape(1, batch * in_channel, height, width), weight, stride=2, groups=batch)
            return self.blur(out.view(batch, self.out_channel, *out.shape[2:]))
        weight = weight.view(batch * self.out_channel, in_channel, k, k)
        if self.downsample:
            x = self.blur(x)
            out = F.conv2d(x.reshape(1, batch * in_channel, *x.shape[2:]), weight, stride=2, groups=batch)
        else:
            out = F.conv2d(x.reshape(1, batch * in_channel, height, width), weight, padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, *out.shape[2:])

    def _shared(self, x: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same result with one shared weight: modulate the input's channels, convolve, then demodulate the
        output's (sum over i, k of (scale w[o,i,k] s[b,i])^2 = scale^2 sum_i s[b,i]^2 sum_k w[o,i,k]^2). A batch
        then runs as one ordinary convolution, far faster than a grouped one with per-sample weights. Returns the
        convolution and the demodulation [B, out] to scale it by (None without demodulation)."""
        weight = self.weight[0]  # [out, in, k, k]
        x = x * (self.scale * style)[:, :, None, None]
        if self.upsample:
            out = self._upsampled(x, weight.transpose(0, 1))
        elif self.downsample:
            out = F.conv2d(self.blur(x), weight, stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if not self.demodulate:
            return out, None
        energy = (self.scale * style).pow(2) @ weight.pow(2).sum([2, 3]).t()  # [B, out]
        return out, torch.rsqrt(energy + 1e-8)


class NoiseInjection(nn.Module):
    """Adds per-pixel noise, one learned strength for all channels; fresh N(0, 1) noise when none is given."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return image + self.weighted(image, noise)

    def weighted(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The term added to `image`: the strength times the noise map (fresh noise when none is given)."""
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return self.weight * noise.to(image.dtype)


class ConstantInput(nn.Module):
    """The learned 4x4 tensor that synthesis starts from."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        """The constant repeated over the batch of `like`."""
        return self.input.repeat(like.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated convolution, noise, bias and activation: one W+ layer of the synthesis network."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[int] = BLUR_KERNEL, demodulate: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, demodulate=demodulate,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.conv.fast:  # demodulation, noise, bias and activation in one epilogue
            out, demodulation = self.conv.undemodulated(x, style)
            return modulated_epilogue(out, demodulation, self.noise.weighted(out, noise), self.activate.bias,
                                      self.activate.negative_slope, self.activate.scale)
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    """1x1 modulated convolution to RGB (no demodulation), added to the upsampled RGB image of the block before."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[int] = BLUR_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# --- Generator ---------------------------------------------------------------------------------------------------------

class BlockOutput(NamedTuple):
    """What one synthesis block hands to the next: its feature map and the RGB image summed so far (the skip)."""

    features: torch.Tensor  # [B, C, r, r]
    skip: torch.Tensor  # [B, 3, r, r]


class Synthesis(NamedTuple):
    """The image, and the output of every block that ran when features were asked for (else an empty dict)."""

    image: torch.Tensor  # [B, 3, size, size], about [-1, 1]
    features: dict[int, BlockOutput]


class Generator(nn.Module):
    """StyleGAN2 generator: mapping network `style` (z -> w) and a skip-architecture synthesis network.

    Synthesis runs in blocks, one per resolution; W+ has n_latent = 2 log2(size) - 2 layers and there are
    num_layers = n_latent - 1 noise maps (for 256 px: 7 blocks, W+ 14 x 512, 13 noise maps):

        block   resolution   modules                                      W+ layers         noise maps
        0       4            input, conv1, to_rgb1                        0, 1              0
        k >= 1  4 * 2**k     convs[2k-2] (up), convs[2k-1], to_rgbs[k-1]  2k-1, 2k, 2k+1    2k-1, 2k

    (a ToRGB shares its W+ layer with the first convolution of the next block). `synthesis(..., return_features=True)`
    gives block k's `BlockOutput` as `features[k]`; `synthesis(..., until=k)` stops after block k (its image is
    the RGB skip so far, at 4 * 2**k); `synthesis(..., start_from=(k, features, skip))` skips blocks 0..k and
    continues from those tensors, so editing them edits the image from resolution 4 * 2**k on.
    """

    def __init__(self, size: int, style_dim: int, n_mlp: int, channel_multiplier: int = 2,
                 blur_kernel: Sequence[int] = BLUR_KERNEL, lr_mlp: float = 0.01, channel_max: int = 512):
        super().__init__()
        self.size = size
        self.log_size = _check_size(size)
        self.style_dim = style_dim
        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)])

        self.channels = channels_for(channel_multiplier, channel_max)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.num_layers = (self.log_size - 2) * 2 + 1  # noise maps
        self.n_latent = self.log_size * 2 - 2  # W+ layers
        self.num_blocks = self.log_size - 1

        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept because the official module has it
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(self.num_layers):
            resolution = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise_{layer}", torch.randn(1, 1, resolution, resolution))

        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel
        self.memory_format = torch.contiguous_format  # of the feature maps; see use_fast_ops

    def use_fast_ops(self, enabled: bool = True, channels_last: bool = False, fir: str = "separate") -> Generator:
        """The equivalent fast forms of the synthesis network's ops (module docstring), or the reference ones again;
        `fir`: the up-sampling blur as its own pass ("separate"), folded into the convolution ("folded") or as
        shifted slices ("taps", for torch.compile); `channels_last`: feature maps in NHWC memory order (what tensor
        cores want). Results equal the reference path's up to rounding; returns G."""
        if fir not in FIR_FORMS:
            raise ValueError(f"fir must be one of {', '.join(FIR_FORMS)}, got {fir!r}")
        for module in self.modules():
            if isinstance(module, (ModulatedConv2d, Upsample)):
                module.fast = enabled
            if isinstance(module, ModulatedConv2d):
                module.fir = fir
        self.memory_format = torch.channels_last if enabled and channels_last else torch.contiguous_format
        return self

    # --- latents ---

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        """The mapping network: z [B, style_dim] -> w [B, style_dim]."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n_latent: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The mean w [1, style_dim] of `n_latent` random z: the centre that truncation pulls towards."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device, generator=generator)
        return self.style(z).mean(0, keepdim=True)

    def make_noise(self) -> list[torch.Tensor]:
        """A fresh set of noise maps, one per noise layer."""
        return [torch.randn_like(getattr(self.noises, f"noise_{layer}")) for layer in range(self.num_layers)]

    def block_index(self, resolution: int) -> int:
        """The synthesis block that works at `resolution` (4 -> 0, 8 -> 1, ...)."""
        block = int(math.log2(resolution)) - 2
        if 4 * 2 ** block != resolution or not 0 <= block < self.num_blocks:
            raise ValueError(f"no synthesis block at resolution {resolution} in a {self.size} px generator")
        return block

    def wplus_from_styles(self, styles: Sequence[torch.Tensor], input_is_latent: bool = False,
                          truncation: float = 1.0, truncation_latent: torch.Tensor | None = None,
                          inject_index: int | None = None) -> torch.Tensor:
        """W+ [B, n_latent, style_dim] from one or two z/w codes (style mixing at `inject_index`) or one W+ code."""
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) == 1:
            style = styles[0]
            return style if style.ndim == 3 else style.unsqueeze(1).repeat(1, self.n_latent, 1)
        if inject_index is None:
            inject_index = random.randint(1, self.n_latent - 1)
        return torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                          styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], 1)

    # --- synthesis ---

    def _noise_maps(self, noise: Sequence[torch.Tensor | None] | None,
                    randomize_noise: bool) -> Sequence[torch.Tensor | None]:
        if noise is not None:
            return noise
        if randomize_noise:
            return [None] * self.num_layers
        return [getattr(self.noises, f"noise_{layer}") for layer in range(self.num_layers)]

    def _block(self, k: int, previous: BlockOutput | None, wplus: torch.Tensor,
               noise: Sequence[torch.Tensor | None]) -> BlockOutput:
        if k == 0:
            out = self.conv1(self.input(wplus).contiguous(memory_format=self.memory_format), wplus[:, 0],
                             noise=noise[0])
            return BlockOutput(out, self.to_rgb1(out, wplus[:, 1]))
        i = 2 * k - 1  # first W+ layer and noise map of this block
        out = self.convs[i - 1](previous.features, wplus[:, i], noise=noise[i])
        out = self.convs[i](out, wplus[:, i + 1], noise=noise[i + 1])
        return BlockOutput(out, self.to_rgbs[k - 1](out, wplus[:, i + 2], previous.skip))

    def synthesis(self, wplus: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None,
                  randomize_noise: bool = False, return_features: bool = False,
                  start_from: tuple[int, torch.Tensor, torch.Tensor] | None = None,
                  until: int | None = None) -> Synthesis:
        """The image for W+ [B, n_latent, style_dim].

        noise: one map (or None for fresh noise) per noise layer; by default the stored maps, or fresh ones with
        `randomize_noise`. return_features: keep every block's `BlockOutput` (see the class docstring).
        start_from: (k, features, skip) = the output of block k to continue from; blocks 0..k are not run.
        until: the last block to run (default: all); the image is then block `until`'s RGB skip.
        Codes are cast to G's dtype (bf16 / fp16 weights: `models.precision`).
        """
        wplus = wplus.to(self.input.input.dtype)
        noise = self._noise_maps(noise, randomize_noise)
        first, previous = 0, None
        if start_from is not None:
            block, features, skip = start_from
            if not 0 <= block < self.num_blocks:
                raise ValueError(f"start_from block must be in [0, {self.num_blocks - 1}], got {block}")
            first, previous = block + 1, BlockOutput(features, skip)
        if until is not None and not first <= until < self.num_blocks:
            raise ValueError(f"until must be in [{first}, {self.num_blocks - 1}], got {until}")
        last = self.num_blocks - 1 if until is None else until
        outputs = {}
        for k in range(first, last + 1):
            previous = self._block(k, previous, wplus, noise)
            if return_features:
                outputs[k] = previous
        return Synthesis(previous.skip, outputs)

    def forward(self, styles: Sequence[torch.Tensor], return_latents: bool = False, inject_index: int | None = None,
                truncation: float = 1.0, truncation_latent: torch.Tensor | None = None, input_is_latent: bool = False,
                noise: Sequence[torch.Tensor | None] | None = None, randomize_noise: bool = False,
                return_features: bool = False, start_from: tuple[int, torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None] | tuple[torch.Tensor, torch.Tensor | None, dict]:
        """rosinality's call: `styles` is a list of z (or w / W+ with `input_is_latent`) codes.

        Returns (image, W+ if return_latents else None), plus the block outputs when `return_features`.
        """
        wplus = self.wplus_from_styles(styles, input_is_latent, truncation, truncation_latent, inject_index)
        image, features = self.synthesis(wplus, noise, randomize_noise, return_features, start_from)
        latent = wplus if return_latents else None
        return (image, latent, features) if return_features else (image, latent)


# --- Discriminator -----------------------------------------------------------------------------------------------------

class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [bias + leaky ReLU]; with `downsample` the convolution has stride 2 after the blur."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[int] = BLUR_KERNEL, bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        # with an activation the bias lives in FusedLeakyReLU
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU(0.2))
        super().__init__(*layers)
        self.fast = False  # `Discriminator.use_fast_ops`: the blur folded into the strided convolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fast and isinstance(self[0], Blur)):
            return super().forward(x)
        blur, conv, *rest = self
        # the FIR (a true convolution with f) then the strided correlation with w are one strided correlation with
        # flip(f) fully convolved with w (`fold_fir`), on the input padded as the FIR pads it
        before, after = blur.pad
        weight = fold_fir(conv.weight * conv.scale, torch.flip(blur.kernel, [0, 1]))
        out = F.conv2d(F.pad(x, [before, after, before, after]), weight, bias=conv.bias, stride=conv.stride)
        for layer in rest:
            out = layer(out)
        return out


class ResBlock(nn.Module):
    """Two 3x3 convolutions (the second halves the resolution) plus a 1x1 downsampling skip, averaged in variance."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[int] = BLUR_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel, activate=False,
                              bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2's residual discriminator: image [B, 3, size, size] -> realness logit [B, 1].

    A minibatch-standard-deviation channel (over groups of up to 4 images) lets it see the batch's variety, so
    each logit depends on the other images of its group; the batch size must be divisible by min(batch, 4).
    """

    def __init__(self, size: int, channel_multiplier: int = 2, blur_kernel: Sequence[int] = BLUR_KERNEL,
                 channel_max: int = 512):
        super().__init__()
        channels = channels_for(channel_multiplier, channel_max)
        log_size = _check_size(size)
        convs: list[nn.Module] = [ConvLayer(3, channels[size], 1)]
        in_channel = channels[size]
        for i in range(log_size, 2, -1):
            out_channel = channels[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)

        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activation="fused_lrelu"),
            EqualLinear(channels[4], 1),
        )

    def use_fast_ops(self, enabled: bool = True) -> Discriminator:
        """Each down-sampling layer's FIR blur folded into its strided convolution (one convolution with a
        (k + 3)-wide kernel instead of a depthwise FIR pass and a k-wide one), or the reference ops again; the
        same maths up to rounding. Returns D."""
        for module in self.modules():
            if isinstance(module, ConvLayer):
                module.fast = enabled
        return self

    def minibatch_stddev(self, out: torch.Tensor) -> torch.Tensor:
        """Append one channel: the mean standard deviation of the features over each group of images."""
        batch, channel, height, width = out.shape
        group = min(batch, self.stddev_group)
        stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)
        return torch.cat([out, stddev.repeat(group, 1, height, width)], 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.final_conv(self.minibatch_stddev(self.convs(image)))
        return self.final_linear(out.view(out.shape[0], -1))
