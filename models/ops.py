"""StyleGAN2's two custom ops in plain torch: FIR up/down-sampling (`upfirdn2d`) and the biased, scaled leaky ReLU.

These are the reference ("native") versions of the CUDA kernels of NVlabs' and rosinality's code: the same maths
on any device, so CPU results are the ones the parity fixtures hold.

The fast path of `models.stylegan2` (`Generator.use_fast_ops`) uses equivalent forms, the same sums in another
order (so equal up to rounding), that leave no depthwise FIR convolution in G:
- `fold_fir`: a transposed convolution followed by the FIR is one transposed convolution with the filter folded
  into its weights (k x k -> k + f - 1; four times the multiply-adds of that convolution, on tensor cores);
- `fir_taps`: a separable FIR as sums of shifted slices, one axis then the other (plain elementwise work that
  torch.compile fuses with what follows into one pass over memory);
- `upsample_transposed`: FIR up-sampling as a depthwise transposed convolution of stride 2 (polyphase: no zeros
  are inserted, read or multiplied);
- `modulated_epilogue`: demodulation, noise, bias, leaky ReLU and gain in one expression (one addcmul and in-place
  passes in eager; one kernel under torch.compile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def make_kernel(kernel: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A 2-D FIR kernel normalised to sum 1; a 1-D kernel k becomes the separable outer product k kᵀ."""
    kernel = torch.as_tensor(kernel, dtype=torch.float32)
    if kernel.ndim == 1:
        kernel = kernel[None, :] * kernel[:, None]
    return kernel / kernel.sum()


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    pad: Sequence[int] = (0, 0),
) -> torch.Tensor:
    """Upsample by zero insertion, pad, filter with `kernel` (true convolution), keep every `down`-th sample.

    x: [B, C, H, W]. `up` and `down` are one factor or (x, y) factors. `pad` is (before, after) for both axes or
    (x0, x1, y0, y1); negative padding crops. Every channel is filtered on its own with the same kernel.
    """
    up_x, up_y = _pair(up)
    down_x, down_y = _pair(down)
    pad_x0, pad_x1, pad_y0, pad_y1 = (*pad, *pad) if len(pad) == 2 else pad
    batch, channels, height, width = x.shape

    if up_x > 1 or up_y > 1:
        # each sample is followed by up - 1 zeros along each axis
        x = F.pad(x.reshape(batch, channels, height, 1, width, 1), [0, up_x - 1, 0, 0, 0, up_y - 1])
        x = x.reshape(batch, channels, height * up_y, width * up_x)
    x = F.pad(x, [pad_x0, pad_x1, pad_y0, pad_y1])  # negative values crop

    # conv2d correlates, so the flipped kernel makes it a convolution; one group per channel (depthwise), and the
    # stride keeps every down-th output, as slicing the full output would
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=(down_y, down_x), groups=channels)


def fold_fir(weight: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each [k, k] filter of `weight` [..., k, k] fully convolved with the FIR `kernel` [f, f]: [..., k+f-1, k+f-1].

    A transposed convolution with the result equals the transposed convolution with `weight` followed by the FIR
    (both are true convolutions of the zero-inserted input), with `transposed_padding` cropping what the FIR's
    padding would."""
    *lead, height, width = weight.shape
    full = F.conv_transpose2d(weight.reshape(-1, 1, height, width), kernel[None, None].to(weight.dtype))
    return full.view(*lead, *full.shape[-2:])


def transposed_padding(kernel_size: int, pad: Sequence[int]) -> int | None:
    """The padding of a transposed convolution that equals one followed by `upfirdn2d(kernel, pad=pad)` with a
    `kernel_size` FIR (see `fold_fir`); None when the FIR's padding is not symmetric (no single padding fits)."""
    before, after = pad
    return kernel_size - 1 - before if before == after else None


def fir_taps(x: torch.Tensor, taps: Sequence[float], pad: Sequence[int]) -> torch.Tensor:
    """`upfirdn2d(x, outer(taps, taps), pad=pad)` (no resampling) as shifted slices times constants: the FIR of a
    separable kernel whose 1-D factor is `taps`, along the width, then the height."""
    before, after = pad
    x = F.pad(x, [before, after, before, after])
    count = len(taps)
    height, width = x.shape[-2] - count + 1, x.shape[-1] - count + 1
    flipped = list(taps)[::-1]  # a true convolution, as upfirdn2d
    x = sum(weight * x[..., :, j:j + width] for j, weight in enumerate(flipped))
    return sum(weight * x[..., j:j + height, :] for j, weight in enumerate(flipped))


def upsample_transposed(x: torch.Tensor, kernel: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """`upfirdn2d(x, kernel, up=2, pad=pad)` as a depthwise transposed convolution of stride 2, for pads
    (p, p - 1) (StyleGAN2's `Upsample`: (2, 1)): the zero-inserted samples are never made."""
    before, after = pad
    if after != before - 1:
        raise ValueError(f"upsample_transposed needs a padding (p, p - 1), got {tuple(pad)}")
    channels = x.shape[1]
    weight = kernel.to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv_transpose2d(x, weight, stride=2, padding=kernel.shape[0] - 1 - before, groups=channels)


def modulated_epilogue(x: torch.Tensor, demodulation: torch.Tensor | None, noise: torch.Tensor | None,
                       bias: torch.Tensor, negative_slope: float = 0.2, scale: float = math.sqrt(2)) -> torch.Tensor:
    """leaky_relu(x * demodulation + noise + bias) * scale: the tail of a StyleGAN2 layer in one expression.

    x [B, C, H, W] (a fresh tensor: it is overwritten), demodulation [B, C] or None, noise already weighted
    [B or 1, 1, H, W] or None, bias [C]."""
    if demodulation is not None:
        x = torch.addcmul(noise if noise is not None else x.new_zeros(()), x, demodulation[:, :, None, None])
    elif noise is not None:
        x = x.add_(noise)
    # the gain goes first (leaky_relu(y) * s = leaky_relu(y * s) for s > 0), so the activation, whose output its
    # gradient reads, is the last in-place pass
    x = x.add_(bias.view(1, -1, 1, 1)).mul_(scale)
    return F.leaky_relu_(x, negative_slope)


def fused_leaky_relu(
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.2,
    scale: float = math.sqrt(2),
) -> torch.Tensor:
    """leaky_relu(x + bias) * scale, with `bias` [C] added along dim 1; sqrt(2) keeps the signal's variance."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """A learned per-channel bias followed by the scaled leaky ReLU (state dict: `bias` [C])."""

    def __init__(self, channel: int, bias: bool = True, negative_slope: float = 0.2, scale: float = math.sqrt(2)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)
