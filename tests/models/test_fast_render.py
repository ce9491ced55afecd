"""The fast render paths against the reference one (the parity-tested fp32 eager path), on the CPU.

Tolerances, on fixed codes (images in [-1, 1], PSNR over the range 2 after clamping):
- the fast ops' forms in float64: equal to the reference to 1e-12 (they are the same sums in another order);
- the fast ops in fp32: max |difference| <= 1e-4;
- bf16 / fp16 networks (weights and activations): PSNR >= 35 dB against fp32 (the issue's bar for the H200),
  mean absolute difference <= 0.02;
- torch.compile (inductor): max |difference| <= 1e-4 in fp32 (slow tier: compiling takes minutes on 2 cores);
  capturing the whole forward as one graph (no host round trip) is checked quickly with dynamo's eager backend.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from models.directions import DirectionMatrix, ParamRanges
from models.feature_transformer import FeatureTransformer
from models.ops import fir_taps, fold_fir, modulated_epilogue, transposed_padding, upfirdn2d, upsample_transposed
from models.precision import cast_networks, dtype_of, network_dtype
from models.reenact import Reenactor, RenderPath
from models.stylegan2 import Discriminator, Generator
from training.tune_generator import GeneratorTuningConfig, tune_generator

STYLE = 32
PSNR_FLOOR = 35.0
MAD_CEILING = 0.02


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """dB over the [-1, 1] range (peak-to-peak 2), both clamped as pixels would be."""
    mse = (image.float().clamp(-1, 1) - reference.float().clamp(-1, 1)).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4 / mse)


def mad(image: torch.Tensor, reference: torch.Tensor) -> float:
    return (image.float() - reference.float()).abs().mean().item()


def small_generator(size: int = 32, seed: int = 0) -> Generator:
    """A narrow G of the real classes (every op of the 256 px one), noise strengths non-zero so noise shows."""
    torch.manual_seed(seed)
    generator = Generator(size, STYLE, 2, channel_multiplier=1, channel_max=32).eval()
    with torch.no_grad():
        for conv in [generator.conv1, *generator.convs]:
            conv.noise.weight.fill_(0.3)
    return generator


def fixed_codes(generator: Generator, count: int, seed: int = 1) -> torch.Tensor:
    """W+ codes of G's own mapping (w on every layer), the same every run."""
    z = torch.randn(count, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    z = z.to(network_dtype(generator))
    with torch.no_grad():
        return generator.get_latent(z).unsqueeze(1).repeat(1, generator.n_latent, 1)


# --- the ops' equivalent forms -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size", [1, 3])
def test_a_transposed_convolution_with_the_fir_folded_in_is_the_two_passes(kernel_size):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 7, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, 4, kernel_size, kernel_size, generator=generator, dtype=torch.float64)
    fir = torch.randn(4, 4, generator=generator, dtype=torch.float64)  # asymmetric: a flip error would show
    p = (4 - 2) - (kernel_size - 1)
    pad = ((p + 1) // 2 + 1, p // 2 + 1)  # ModulatedConv2d's blur after an up-sampling convolution
    two_passes = upfirdn2d(F_conv_transpose(x, weight), fir, pad=pad)
    padding = transposed_padding(4, pad)
    if padding is None:  # 1x1: the blur's padding is not symmetric, so nothing folds (ModulatedConv2d keeps 2 passes)
        assert pad[0] != pad[1]
        return
    folded = torch.nn.functional.conv_transpose2d(x, fold_fir(weight, fir), stride=2, padding=padding)
    assert folded.shape == two_passes.shape
    torch.testing.assert_close(folded, two_passes, rtol=0, atol=1e-12)


def F_conv_transpose(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.conv_transpose2d(x, weight, stride=2)


def test_a_separable_fir_as_shifted_slices_is_upfirdn2d():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    taps = torch.randn(4, generator=generator, dtype=torch.float64)  # asymmetric
    expected = upfirdn2d(x, taps[:, None] * taps[None, :], pad=(1, 2))
    torch.testing.assert_close(fir_taps(x, taps.tolist(), (1, 2)), expected, rtol=0, atol=1e-12)


def test_fir_upsampling_as_a_strided_transposed_convolution_is_upfirdn2d():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    fir = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    expected = upfirdn2d(x, fir, up=2, pad=(2, 1))
    torch.testing.assert_close(upsample_transposed(x, fir, (2, 1)), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="padding"):
        upsample_transposed(x, fir, (1, 1))


def test_the_epilogue_is_demodulation_noise_bias_and_scaled_leaky_relu():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 5, 5, generator=generator, dtype=torch.float64)
    demodulation = torch.rand(2, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 1, 5, 5, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    by_hand = torch.nn.functional.leaky_relu(x * demodulation[:, :, None, None] + noise + bias.view(1, -1, 1, 1), 0.2)
    torch.testing.assert_close(modulated_epilogue(x.clone(), demodulation, noise, bias), by_hand * math.sqrt(2),
                               rtol=0, atol=1e-12)
    no_demodulation = torch.nn.functional.leaky_relu(x + noise + bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
    torch.testing.assert_close(modulated_epilogue(x.clone(), None, noise, bias), no_demodulation, rtol=0, atol=1e-12)


# --- G: fast ops, dtypes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, channels_last, fir", [(1, False, "folded"), (3, True, "folded"), (3, True, "taps"),
                                                       (3, True, "separate")])
def test_fast_ops_are_the_reference_synthesis_in_float64(batch, channels_last, fir):  # batch 1: grouped convolution
    reference = small_generator().double()
    fast = copy.deepcopy(reference).use_fast_ops(channels_last=channels_last, fir=fir)
    codes = fixed_codes(reference, batch)
    with torch.no_grad():
        expected = reference.synthesis(codes).image
        image = fast.synthesis(codes).image
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-12)
    fast.use_fast_ops(False)  # and back: the reference path again, bit for bit
    with torch.no_grad():
        assert torch.equal(fast.synthesis(codes).image, expected)


def test_the_discriminators_folded_downsampling_is_the_reference_in_float64():
    torch.manual_seed(0)
    reference = Discriminator(32, channel_multiplier=1, channel_max=32).double()
    fast = copy.deepcopy(reference).use_fast_ops()
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    expected, logits = reference(images), fast(images)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    # R1 differentiates D's output by its input, with the graph kept: the same gradients
    (gradient_reference,) = torch.autograd.grad(expected.sum(), images, create_graph=True)
    (gradient_fast,) = torch.autograd.grad(logits.sum(), images, create_graph=True)
    torch.testing.assert_close(gradient_fast, gradient_reference, rtol=0, atol=1e-12)


def test_fast_ops_in_fp32_and_their_gradients():
    reference = small_generator()
    fast = copy.deepcopy(reference).use_fast_ops(fir="folded")
    codes = fixed_codes(reference, 4).requires_grad_(True)
    expected = reference.synthesis(codes).image
    image = fast.synthesis(codes).image
    assert (image - expected).abs().max().item() <= 1e-4
    # training through them (tuning G on a source) gets the same gradients
    (gradient_reference,) = torch.autograd.grad(expected.square().sum(), codes)
    (gradient_fast,) = torch.autograd.grad(image.square().sum(), codes)
    torch.testing.assert_close(gradient_fast, gradient_reference, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("precision, fir", [("bf16", None), ("bf16", "separate"), ("bf16", "folded"),
                                           ("bf16", "taps"), ("fp16", "separate")])
def test_half_precision_networks_stay_within_the_stated_tolerance(precision, fir):
    reference = small_generator()
    codes = fixed_codes(reference, 8)
    half = copy.deepcopy(reference)
    cast_networks(precision, half)
    half.use_fast_ops(fir is not None, channels_last=fir is not None, fir=fir or "separate")
    assert network_dtype(half) == dtype_of(precision) and half.noises.noise_0.dtype == dtype_of(precision)
    with torch.no_grad():
        expected = reference.synthesis(codes).image
        image = half.synthesis(codes).image  # fp32 codes in: G casts them
    assert image.dtype == dtype_of(precision)
    assert psnr(image, expected) >= PSNR_FLOOR, psnr(image, expected)
    assert mad(image, expected) <= MAD_CEILING


def test_precision_names():
    assert dtype_of("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        dtype_of("int8")
    assert RenderPath.for_device("bf16", "cpu") == RenderPath()  # a CPU keeps the reference path
    assert RenderPath.for_device("fp32", "cuda") == RenderPath()
    assert RenderPath.for_device("bf16", "cuda") == RenderPath("bf16", fast_ops=True, channels_last=True)
    with pytest.raises(ValueError, match="separate, folded, taps"):
        small_generator().use_fast_ops(fir="other")


# --- the Reenactor ---------------------------------------------------------------------------------------------------

def reenactor_of(generator: Generator, transformer: bool = False, truncation: float = 0.7) -> Reenactor:
    torch.manual_seed(5)
    directions = DirectionMatrix(shift_dim=STYLE, num_layers=8)
    torch.nn.init.normal_(directions.linear.bias, std=0.1)
    refiner = None
    if transformer:
        refiner = FeatureTransformer(generator.channels[16], 16, generator.size, hidden=8)
        for head in (refiner.flow, refiner.gate):  # a transformer that moves things (a fresh one is the identity)
            torch.nn.init.normal_(head.weight, std=0.05)
    return Reenactor(generator, directions, ParamRanges.load(), truncation=truncation, mean_samples=64,
                     transformer=refiner).eval()


def driving_inputs(count: int = 4, size: int = 32):
    generator = torch.Generator().manual_seed(3)
    wplus = torch.randn(1, 8, STYLE, generator=generator)
    source = torch.cat([torch.randn(1, 3, generator=generator) * 10, torch.rand(1, 12, generator=generator) * 0.2], 1)
    driving = source + torch.randn(count, 15, generator=generator) * torch.tensor([5.0] * 3 + [0.1] * 12)
    image = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    return wplus, source, driving, image


@pytest.mark.parametrize("transformer", [False, True])
def test_a_bf16_render_path_reenacts_within_tolerance_and_a_fresh_tuned_G_comes_back_in_bf16(transformer):
    reference = reenactor_of(small_generator(), transformer)
    wplus, source, driving, image = driving_inputs()
    extra = {"source_image": image} if transformer else {}
    with torch.no_grad():
        expected = reference(wplus, source, driving, **extra)
    fast = copy.deepcopy(reference).use_render_path(RenderPath("bf16", fast_ops=True, channels_last=True))
    assert network_dtype(fast.generator) is torch.bfloat16 and network_dtype(fast.directions) is torch.float32
    with torch.no_grad():
        images = fast(wplus, source, driving, **extra)
        if transformer:  # the per-source part computed once gives the same frames
            detail = fast.source_detail(wplus, image)
            assert torch.equal(fast(wplus, source, driving, source_detail=detail, **extra), images)
    assert images.dtype is torch.bfloat16
    assert psnr(images, expected) >= PSNR_FLOOR and mad(images, expected) <= MAD_CEILING
    # tuning a bf16 G: tuned in fp32, handed back in bf16, and it renders what it was tuned to
    code = fast.truncate(wplus)
    target = expected[:1].detach()
    render = (lambda g: fast.transformer.render(g, code, code, image)) if transformer else None
    tuned, report = tune_generator(fast.generator, code, target, GeneratorTuningConfig(steps=3, lpips_weight=0),
                                   None, render)
    assert network_dtype(tuned) is torch.bfloat16 and network_dtype(fast.generator) is torch.bfloat16
    assert report["after"]["l2"] < report["before"]["l2"]
    with torch.no_grad():
        assert fast(wplus, source, driving, generator=tuned, **extra).dtype is torch.bfloat16


def test_the_ranges_map_is_on_the_device_and_follows_a_new_table():
    reenactor = reenactor_of(small_generator())
    buffers = dict(reenactor.named_buffers())
    assert {"shift_map.slope", "shift_map.offset", "mean_w"} <= set(buffers)
    assert not any(name.startswith("shift_map") for name in reenactor.state_dict())  # nothing new is saved
    _, source, driving, _ = driving_inputs()
    before = reenactor.delta_p(source, driving)
    table = ParamRanges.load().table.copy()
    table[3:15, 1] += 1.0  # wider jaw and expression ranges: smaller shifts
    reenactor.ranges = ParamRanges(table)
    assert reenactor.ranges.table is table
    after = reenactor.delta_p(source, driving)
    assert torch.equal(after[:, :3], before[:, :3]) and (after[:, 3:].abs() < before[:, 3:].abs()).all()


def test_the_whole_forward_is_one_graph():
    """dynamo captures Reenactor.forward, Feature Transformer and G included, without a break (fullgraph): no numpy,
    no host round trip inside."""
    torch._dynamo.reset()
    reenactor = reenactor_of(small_generator(), transformer=True)
    wplus, source, driving, image = driving_inputs()
    with torch.no_grad():
        extra = {"source_image": image, "source_detail": reenactor.source_detail(wplus, image)}
        expected = reenactor(wplus, source, driving, **extra)
        captured = reenactor.compiled(backend="eager")(wplus, source, driving, **extra)
    assert torch.equal(captured, expected)


@pytest.mark.slow
def test_inductor_compiles_the_reenactor_and_its_bf16_fast_path():
    torch._dynamo.reset()
    reference = reenactor_of(small_generator(), transformer=True)
    wplus, source, driving, image = driving_inputs()
    with torch.no_grad():
        detail = reference.source_detail(wplus, image)
        expected = reference(wplus, source, driving, source_image=image, source_detail=detail)
        compiled = reference.compiled()(wplus, source, driving, source_image=image, source_detail=detail)
        assert (compiled - expected).abs().max().item() <= 1e-4
        fast = copy.deepcopy(reference).use_render_path(RenderPath("bf16", True, True, fir="taps"))
        detail = fast.source_detail(wplus, image)
        images = fast.compiled()(wplus, source, driving, source_image=image, source_detail=detail)
    assert psnr(images, expected) >= PSNR_FLOOR and mad(images, expected) <= MAD_CEILING


@pytest.mark.slow
def test_the_official_256_layout_in_bf16_with_fast_ops_on_fixed_codes():
    """The paper's G (256 px, 512 channels up to 32 px) with random weights, 16 fixed codes (the H200 benchmark
    measures 64; a CPU takes about a minute for these)."""
    torch.manual_seed(0)
    reference = Generator(256, 512, 8, channel_multiplier=1).eval()
    codes = fixed_codes(reference, 16)
    fast = copy.deepcopy(reference)
    cast_networks("bf16", fast)
    fast.use_fast_ops(channels_last=True)
    with torch.no_grad():
        expected = torch.cat([reference.synthesis(codes[i:i + 4]).image for i in range(0, 16, 4)])
        images = torch.cat([fast.synthesis(codes[i:i + 4]).image for i in range(0, 16, 4)])
    assert psnr(images, expected) >= PSNR_FLOOR, psnr(images, expected)
    assert mad(images, expected) <= MAD_CEILING
