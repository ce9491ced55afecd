"""StyleGAN2: the ops against their definition, the official state-dict layouts, parity with the reference code, and
the feature return / injection used for feature-space editing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.ops import fused_leaky_relu, make_kernel, upfirdn2d
from models.stylegan2 import Discriminator, Generator
from tests.models.parity import assert_fill_matches, fill_for_parity, fill_from_table, load_fixture

REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference"


def manifest(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


def state_entries(module: torch.nn.Module) -> list[list]:
    parameters = {name for name, _ in module.named_parameters()}
    return [[name, list(t.shape), str(t.dtype).removeprefix("torch."), "parameter" if name in parameters else "buffer"]
            for name, t in module.state_dict().items()]


def meta_state(entries: list[list]) -> dict[str, torch.Tensor]:
    return {name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for name, shape, dtype, _ in entries}


def voxceleb_generator(device: str = "cpu") -> Generator:
    with torch.device(device):
        return Generator(256, 512, 8, channel_multiplier=1)


def voxceleb_discriminator(device: str = "cpu") -> Discriminator:
    with torch.device(device):
        return Discriminator(256, channel_multiplier=1)


# --- ops ---------------------------------------------------------------------------------------------------------------

def upfirdn_by_definition(x: np.ndarray, kernel: np.ndarray, up: int, down: int, pad: tuple[int, int, int, int]):
    """One [H, W] plane: zero insertion, padding (negative crops), true 2-D convolution, every down-th sample."""
    pad_x0, pad_x1, pad_y0, pad_y1 = pad
    upsampled = np.zeros((x.shape[0] * up, x.shape[1] * up))
    upsampled[::up, ::up] = x
    padded = np.pad(upsampled, ((max(pad_y0, 0), max(pad_y1, 0)), (max(pad_x0, 0), max(pad_x1, 0))))
    padded = padded[max(-pad_y0, 0): padded.shape[0] - max(-pad_y1, 0),
                    max(-pad_x0, 0): padded.shape[1] - max(-pad_x1, 0)]
    kh, kw = kernel.shape
    out = np.zeros((padded.shape[0] - kh + 1, padded.shape[1] - kw + 1))
    for i in range(kh):  # out[y, x] = sum_ij kernel[i, j] * padded[y + kh-1 - i, x + kw-1 - j]
        for j in range(kw):
            out += kernel[i, j] * padded[kh - 1 - i: kh - 1 - i + out.shape[0], kw - 1 - j: kw - 1 - j + out.shape[1]]
    return out[::down, ::down]


@pytest.mark.parametrize("up, down, pad", [
    (1, 1, (1, 2, 1, 2)),  # Blur after the upsampling convolution
    (2, 1, (2, 1, 2, 1)),  # Upsample of the skip image
    (1, 2, (1, 1, 1, 1)),  # Blur before a strided convolution
    (2, 2, (0, 3, 1, 0)),
    (1, 1, (-1, 2, 3, -2)),  # negative padding crops
])
def test_upfirdn2d_follows_its_definition(up, down, pad):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    kernel = torch.randn(4, 3, generator=generator, dtype=torch.float64)  # asymmetric: a flip error would show
    ours = upfirdn2d(x, kernel, up=up, down=down, pad=pad)
    for b in range(2):
        for c in range(3):
            expected = upfirdn_by_definition(x[b, c].numpy(), kernel.numpy(), up, down, pad)
            np.testing.assert_allclose(ours[b, c].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_make_kernel_and_upsampling_keep_the_signal_level():
    kernel = make_kernel([1, 3, 3, 1])
    assert kernel.shape == (4, 4) and kernel.sum().item() == 1.0
    assert kernel[0].tolist() == pytest.approx([1 / 64, 3 / 64, 3 / 64, 1 / 64])
    flat = torch.full((1, 1, 8, 8), 2.5)
    upsampled = upfirdn2d(flat, kernel * 4, up=2, pad=(2, 1))
    assert upsampled.shape == (1, 1, 16, 16)
    assert torch.allclose(upsampled[..., 2:-2, 2:-2], torch.tensor(2.5))  # away from the zero-padded border


def test_fused_leaky_relu_by_hand():
    x = torch.tensor([[-1.0, 2.0], [0.5, -3.0]]).view(1, 2, 2, 1)  # channels 0 and 1
    bias = torch.tensor([1.5, -1.0])
    out = fused_leaky_relu(x, bias).flatten().tolist()
    s = math.sqrt(2)
    assert out == pytest.approx([0.5 * s, 3.5 * s, -0.5 * 0.2 * s, -4.0 * 0.2 * s])


# --- the official layouts ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, name, checkpoint_key", [
    (voxceleb_generator, "stylegan2_voxceleb256_g_ema.json", "g_ema"),
    (voxceleb_discriminator, "discriminator_256.json", "d"),
])
def test_state_dict_is_the_official_one_and_loads_strictly(build, name, checkpoint_key):
    reference = manifest(name)
    model = build("meta")
    assert state_entries(model) == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["total_parameter_count"]
    assert sum(b.numel() for b in model.buffers()) == reference["total_buffer_elements"]

    checkpoint = {checkpoint_key: meta_state(reference["state_dict"])}  # how stylegan-voxceleb.pt is laid out
    build("meta").load_state_dict(checkpoint[checkpoint_key], strict=True, assign=True)
    incomplete = dict(checkpoint[checkpoint_key])
    dropped = reference["state_dict"][-1][0]
    del incomplete[dropped]
    with pytest.raises(RuntimeError, match=dropped):
        build("meta").load_state_dict(incomplete, strict=True, assign=True)


def test_voxceleb_generator_geometry():
    g = voxceleb_generator("meta")
    assert (g.n_latent, g.num_layers, g.num_blocks) == (14, 13, 7)
    assert [g.block_index(4 * 2 ** k) for k in range(7)] == list(range(7))
    with pytest.raises(ValueError):
        g.block_index(512)
    with pytest.raises(ValueError):
        Generator(100, 512, 8)


# --- parity with the official code -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generator_reference():
    fixture, arrays = load_fixture("stylegan2_generator")
    g = voxceleb_generator().eval()
    fill_from_table(g, fixture)
    tolerance = {check["output"]: check["tolerance_abs"] for check in fixture["checks"]}
    return g, fixture, arrays, tolerance


def max_abs_diff(ours: torch.Tensor, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape
    return float(np.abs(ours.numpy() - reference).max())


def test_generator_matches_the_reference_code(generator_reference):
    g, fixture, arrays, tolerance = generator_reference
    assert_fill_matches(g, fixture)  # includes the FIR kernels our constructor made
    z, wplus = torch.from_numpy(arrays["z"]), torch.from_numpy(arrays["wplus"])
    with torch.no_grad():
        assert max_abs_diff(g.style(z), arrays["w"]) <= tolerance["w"]
        image_a, latent = g([z], input_is_latent=False, randomize_noise=False, truncation=1, return_latents=True)
        assert max_abs_diff(image_a, arrays["image_a"]) <= tolerance["image_a"]
        image_b, none = g([wplus], input_is_latent=True, randomize_noise=False, truncation=1)
        assert max_abs_diff(image_b, arrays["image_b"]) <= tolerance["image_b"]
    assert none is None
    assert latent.shape == (2, 14, 512) and torch.equal(latent, g.style(z).unsqueeze(1).expand(-1, 14, -1))


def test_discriminator_matches_the_reference_code():
    d = voxceleb_discriminator()
    arrays, tolerance = fill_for_parity(d, "stylegan2_discriminator")
    with torch.no_grad():
        logits = d(torch.from_numpy(arrays["image"]))
    assert max_abs_diff(logits, arrays["logits"]) <= tolerance["logits"]


# --- latents, noise, features ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_generator() -> Generator:
    """32 px (4 blocks, W+ 8 x 64): the same code paths at a fraction of the cost. Noise strengths are made non-zero so
    that noise handling shows in the image."""
    torch.manual_seed(0)
    g = Generator(32, 64, 2, channel_multiplier=1).eval()
    with torch.no_grad():
        for conv in [g.conv1, *g.convs]:
            conv.noise.weight.fill_(0.5)
    return g


def test_style_mixing_and_truncation_build_wplus(small_generator):
    g = small_generator
    z1, z2 = torch.randn(2, 64, generator=torch.Generator().manual_seed(1)).split(1)
    with torch.no_grad():
        w1, w2 = g.get_latent(z1), g.get_latent(z2)
        mixed = g.wplus_from_styles([z1, z2], inject_index=3)
        assert mixed.shape == (1, 8, 64)
        assert torch.equal(mixed[:, :3], w1[:, None].expand(-1, 3, -1))
        assert torch.equal(mixed[:, 3:], w2[:, None].expand(-1, 5, -1))
        centre = g.mean_latent(256, generator=torch.Generator().manual_seed(2))
        assert centre.shape == (1, 64)
        assert torch.equal(centre, g.mean_latent(256, generator=torch.Generator().manual_seed(2)))
        truncated = g.wplus_from_styles([w1.unsqueeze(1).repeat(1, 8, 1)], input_is_latent=True, truncation=0.25,
                                        truncation_latent=centre)
        assert torch.allclose(truncated, (centre + 0.25 * (w1 - centre)).unsqueeze(1).expand(-1, 8, -1))


def test_noise_is_the_stored_maps_unless_asked_otherwise(small_generator):
    g = small_generator
    wplus = torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        stored = g.synthesis(wplus).image
        assert torch.equal(stored, g.synthesis(wplus).image)
        assert torch.equal(stored, g.synthesis(wplus, noise=[getattr(g.noises, f"noise_{i}") for i in range(7)]).image)
        assert not torch.allclose(stored, g.synthesis(wplus, randomize_noise=True).image)
        assert not torch.allclose(stored, g.synthesis(wplus, noise=g.make_noise()).image)


def test_features_are_returned_per_block(small_generator):
    g = small_generator
    wplus = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        image, features = g.synthesis(wplus, return_features=True)
        image_forward, latent, features_forward = g([wplus], input_is_latent=True, return_features=True)
    assert list(features) == [0, 1, 2, 3]
    for k, (feature_map, skip) in features.items():
        resolution = 4 * 2 ** k
        assert feature_map.shape == (2, g.channels[resolution], resolution, resolution)
        assert skip.shape == (2, 3, resolution, resolution)
        assert torch.equal(feature_map, features_forward[k].features)
    assert torch.equal(features[3].skip, image) and torch.equal(image_forward, image) and latent is None


@pytest.mark.parametrize("block", [0, 1, 2, 3])
def test_starting_from_returned_features_reproduces_the_image(small_generator, block):
    g = small_generator
    wplus = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        image, features = g.synthesis(wplus, return_features=True)
        resumed = g.synthesis(wplus, start_from=(block, *features[block]), return_features=True)
        assert torch.equal(resumed.image, image)
        assert list(resumed.features) == list(range(block + 1, 4))

        # the injected features are really used: editing them changes the image, from their block on
        edited = g.synthesis(wplus, start_from=(block, features[block].features * 1.5, features[block].skip)).image
    if block < 3:
        assert not torch.allclose(edited, image)
    else:  # the last block's feature map feeds nothing: its skip is the image
        assert torch.equal(edited, image)


def test_start_from_checks_the_block(small_generator):
    wplus = torch.zeros(1, 8, 64)
    with pytest.raises(ValueError, match="start_from block"):
        small_generator.synthesis(wplus, start_from=(4, torch.zeros(1), torch.zeros(1)))


def test_a_batch_renders_as_its_samples_one_by_one():
    """Batches take the shared-weight path of ModulatedConv2d, single images the official grouped one (the parity
    fixtures hold single images): both must give the same pixels."""
    torch.manual_seed(0)
    generator = Generator(64, 64, 2, channel_multiplier=1).eval()
    wplus = torch.randn(3, generator.n_latent, 64)
    with torch.no_grad():
        together = generator.synthesis(wplus).image
        alone = torch.cat([generator.synthesis(wplus[i:i + 1]).image for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
