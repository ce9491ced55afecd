"""One reenactment step by hand: w_reenact = w_source + A(Δp), truncated, rendered by G; and the temporal filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.directions import ANGLE_SCALES, JAW_ROW, SHIFT_SCALE, DirectionMatrix, ParamRanges
from models.reenact import Reenactor
from models.stylegan2 import Generator
from models.temporal import false_runs, gaussian_smooth, last_true, nearest_true

STYLE = 64


@pytest.fixture(scope="module")
def reenactor() -> Reenactor:
    torch.manual_seed(0)
    generator = Generator(64, STYLE, 2, channel_multiplier=1).eval()  # W+ of 10 layers
    directions = DirectionMatrix(shift_dim=STYLE, num_layers=8)
    torch.nn.init.normal_(directions.linear.bias, std=0.1)  # a bias that shows where it goes
    return Reenactor(generator, directions, ParamRanges.load()).eval()


def source(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 10, STYLE, generator=g), torch.cat([torch.randn(1, 3, generator=g) * 10,
                                                              torch.rand(1, 12, generator=g) * 0.2], 1)


def test_zero_delta_p_renders_the_source_code_moved_by_As_bias_alone(reenactor):
    wplus, params = source()
    delta = reenactor.delta_p(params, params.repeat(3, 1))
    assert torch.equal(delta, torch.zeros(3, 15))
    fed = reenactor.shifted_wplus(wplus, delta)
    bias = reenactor.directions.linear.bias.view(8, STYLE)
    torch.testing.assert_close(fed[:, :8], (wplus[:, :8] + bias).expand(3, -1, -1), rtol=0, atol=1e-6)
    assert torch.equal(fed[:, 8:], wplus[:, 8:].expand(3, -1, -1))
    # with a bias-free A, Δp = 0 gives back exactly the source's W+
    without = Reenactor(reenactor.generator, DirectionMatrix(shift_dim=STYLE, num_layers=8, bias=False),
                        reenactor.ranges)
    assert torch.equal(without.shifted_wplus(wplus, torch.zeros(2, 15)), wplus.expand(2, -1, -1))


def test_one_direction_moves_layers_0_to_7_by_its_column_times_the_scaled_change(reenactor):
    wplus, params = source()
    ranges = reenactor.ranges.table
    driving = params.clone().repeat(2, 1)
    driving[0, 0] += 10.0  # 10 degrees more yaw
    driving[1, 3] = ranges[JAW_ROW, 1]  # the jaw from the source's to the widest opening of the table
    expected_delta = torch.zeros(2, 15)
    expected_delta[0, 0] = 10.0 * SHIFT_SCALE / ANGLE_SCALES[0]  # 1.5 shift units
    expected_delta[1, 3] = (ranges[JAW_ROW, 1] - params[0, 3].item()) * 2 * SHIFT_SCALE / (ranges[JAW_ROW, 1] - ranges[JAW_ROW, 0])
    delta = reenactor.delta_p(params, driving)
    torch.testing.assert_close(delta, expected_delta, rtol=1e-5, atol=1e-5)

    fed = reenactor.shifted_wplus(wplus, delta)
    rest = reenactor.shifted_wplus(wplus, torch.zeros(1, 15))
    weight = reenactor.directions.linear.weight  # [8 * 64, 15]
    for row, direction in ((0, 0), (1, 3)):
        column = weight[:, direction].view(8, STYLE)
        torch.testing.assert_close(fed[row, :8] - rest[0, :8], column * expected_delta[row, direction],
                                   rtol=1e-4, atol=1e-5)
        assert torch.equal(fed[row, 8:], wplus[0, 8:])


def test_truncation_pulls_the_fed_code_towards_the_mean_w():
    torch.manual_seed(0)
    generator = Generator(64, STYLE, 2, channel_multiplier=1).eval()
    directions = DirectionMatrix(shift_dim=STYLE, num_layers=8, bias=False)
    plain = Reenactor(generator, directions, ParamRanges.load())
    truncated = Reenactor(generator, directions, ParamRanges.load(), truncation=0.7)
    again = Reenactor(generator, directions, ParamRanges.load(), truncation=0.7)
    assert torch.equal(truncated.mean_w, again.mean_w)  # a fixed seed: the same mean every time
    wplus, params = source()
    delta = truncated.delta_p(params, params)
    mean = truncated.mean_w
    torch.testing.assert_close(truncated.shifted_wplus(wplus, delta), mean + 0.7 * (wplus - mean))
    assert torch.equal(plain.shifted_wplus(wplus, delta), wplus)
    with pytest.raises(ValueError, match="truncation"):
        Reenactor(generator, directions, ParamRanges.load(), truncation=0)


def test_forward_is_G_of_the_shifted_code_and_one_source_serves_a_batch(reenactor):
    wplus, params = source()
    driving = params.repeat(4, 1) + torch.linspace(0, 3, 4)[:, None]
    with torch.no_grad():
        images = reenactor(wplus, params, driving)
        expected = reenactor.generator.synthesis(reenactor.shifted_wplus(wplus, reenactor.delta_p(params, driving))).image
    assert images.shape == (4, 3, 64, 64)
    torch.testing.assert_close(images, expected)
    assert not torch.allclose(images[0], images[3])  # the driving parameters change the picture


def test_A_must_not_shift_more_layers_than_G_has():
    generator = Generator(32, STYLE, 2, channel_multiplier=1)  # 8 W+ layers
    with pytest.raises(ValueError, match="shifts 9 W\\+ layers"):
        Reenactor(generator, DirectionMatrix(shift_dim=STYLE, num_layers=9), ParamRanges.load())


# --- temporal filters --------------------------------------------------------------------------------------------------

def test_gaussian_smoothing_keeps_constants_and_removes_alternating_noise():
    still = np.full((20, 3), 4.0)
    np.testing.assert_allclose(gaussian_smooth(still, 2.0), still)
    noise = np.tile([1.0, -1.0], 10)[:, None]
    assert np.abs(gaussian_smooth(noise, 1.5)[3:-3]).max() < 0.05
    assert np.array_equal(gaussian_smooth(noise, 0), noise)


def test_last_true_holds_the_latest_good_frame():
    mask = np.array([False, True, True, False, False, True, False])
    assert last_true(mask).tolist() == [1, 1, 2, 2, 2, 5, 5]
    assert false_runs(mask) == [(0, 1), (3, 5), (6, 7)]
    assert false_runs(np.ones(4, bool)) == []
    with pytest.raises(ValueError, match="no True"):
        last_true(np.zeros(3, bool))
    with pytest.raises(ValueError, match="no True"):
        nearest_true(np.zeros(3, bool))
