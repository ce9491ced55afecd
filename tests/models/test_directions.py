"""The direction matrix A (official layout, parity, checkpoint dict), the W+ shift, and Δp by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.directions import (
    NUM_EXPRESSIONS,
    NUM_PARAMS,
    PARAM_NAMES,
    RANGES_PATH,
    DirectionMatrix,
    FaceParams,
    ParamRanges,
    delta_p,
    from_checkpoint,
    shift_wplus,
    to_checkpoint,
)
from tests.models.parity import fill_for_parity

REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference"
INFERENCE_KEYS = {"A_matrix", "learned_directions", "shift_scale", "w_plus", "num_layers_shift", "shift_dim"}


def manifest() -> dict:
    return json.loads((REFERENCE / "a_matrix.json").read_text())


@pytest.fixture(scope="module")
def ranges() -> ParamRanges:
    return ParamRanges.load()


def faces(batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float64) -> FaceParams:
    """Random but plausible parameters: angles in degrees, jaw and expressions near their ranges."""
    g = torch.Generator().manual_seed(seed)
    return FaceParams.from_vector(torch.cat([torch.randn(batch, 3, generator=g, dtype=dtype) * 15,
                                             torch.randn(batch, 12, generator=g, dtype=dtype) * 0.3], 1))


# --- the official layout and checkpoint dict ---------------------------------------------------------------------------

def test_state_dict_is_the_official_one():
    a = DirectionMatrix(shift_dim=512, input_dim=15, out_dim=None, w_plus=True, bias=True, num_layers=8)
    ours = [[name, list(t.shape), str(t.dtype).removeprefix("torch."), "parameter"] for name, t in a.state_dict().items()]
    assert ours == manifest()["state_dict"]
    assert sum(p.numel() for p in a.parameters()) == manifest()["total_parameter_count"]
    assert abs(a.linear.weight.std().item() - 0.03) < 0.002  # the official N(0, 0.03) start


def official_checkpoint(with_shift_dim: bool) -> dict:
    """A dict laid out like A_matrix.pt: the released file has `shift_dim`, training saves have `step` instead."""
    state = {name: torch.randn(shape) for name, shape, _, _ in manifest()["state_dict"]}
    checkpoint = {"A_matrix": state, "learned_directions": 15, "shift_scale": 6.0, "w_plus": True,
                  "num_layers_shift": 8}
    checkpoint.update({"shift_dim": 512} if with_shift_dim else {"step": 30000})
    return checkpoint


@pytest.mark.parametrize("with_shift_dim", [True, False])
def test_official_checkpoint_dict_loads_strictly(with_shift_dim):
    checkpoint = official_checkpoint(with_shift_dim)
    a, shift_scale = from_checkpoint(checkpoint)
    assert shift_scale == 6.0 and (a.shift_dim, a.input_dim, a.num_layers, a.w_plus) == (512, 15, 8, True)
    assert torch.equal(a.linear.weight, checkpoint["A_matrix"]["linear.weight"])
    assert torch.equal(a.linear.bias, checkpoint["A_matrix"]["linear.bias"])


def test_checkpoint_problems_are_named():
    checkpoint = official_checkpoint(True)
    del checkpoint["num_layers_shift"]
    with pytest.raises(KeyError, match="num_layers_shift"):
        from_checkpoint(checkpoint)
    checkpoint = official_checkpoint(True)
    checkpoint["A_matrix"]["linear.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="linear.extra"):
        from_checkpoint(checkpoint)


def test_checkpoint_dict_round_trip():
    a = DirectionMatrix()
    checkpoint = to_checkpoint(a, shift_scale=6.0, step=12)
    assert set(checkpoint) == INFERENCE_KEYS | {"step"}
    assert (checkpoint["learned_directions"], checkpoint["num_layers_shift"], checkpoint["shift_dim"]) == (15, 8, 512)
    loaded, shift_scale = from_checkpoint(checkpoint)
    assert shift_scale == 6.0
    delta = torch.randn(3, 15)
    assert torch.equal(loaded(delta), a(delta))


# --- parity and the shift ----------------------------------------------------------------------------------------------

def test_matches_the_reference_code():
    a = DirectionMatrix()
    arrays, tolerance = fill_for_parity(a, "direction_matrix_A")
    wplus = torch.from_numpy(arrays["wplus"])
    with torch.no_grad():
        shift = a(torch.from_numpy(arrays["delta_p"]))
        shifted = shift_wplus(wplus, shift)
    assert shift.shape == (3, 8, 512) and shifted.shape == (3, 14, 512)
    assert np.abs(shift.numpy() - arrays["shift"]).max() <= tolerance["shift"]
    assert np.abs(shifted.numpy() - arrays["shifted_wplus"]).max() <= tolerance["shifted_wplus"]
    assert torch.equal(shifted[:, 8:], wplus[:, 8:])


@pytest.mark.parametrize("direction", [0, 3, 14])
def test_one_direction_shifts_layers_0_to_7_by_its_column(direction):
    a = DirectionMatrix(bias=False)  # without a bias the shift is exactly column * Δp
    wplus = torch.randn(2, 14, 512)
    delta = torch.zeros(2, 15)
    delta[:, direction] = torch.tensor([1.0, -2.5])
    with torch.no_grad():
        moved = shift_wplus(wplus, a(delta)) - wplus
    column = a.linear.weight[:, direction].detach().view(8, 512)
    assert torch.equal(moved[:, 8:], torch.zeros(2, 6, 512))
    assert torch.allclose(moved[0, :8], column * 1.0, atol=1e-6)
    assert torch.allclose(moved[1, :8], column * -2.5, atol=1e-6)


def test_shift_is_not_in_place_and_a_w_shift_moves_every_layer():
    wplus = torch.zeros(1, 14, 4)
    shifted = shift_wplus(wplus, torch.ones(1, 8, 4))
    assert wplus.abs().sum() == 0 and shifted[:, :8].eq(1).all() and shifted[:, 8:].eq(0).all()
    assert shift_wplus(wplus, torch.ones(1, 4)).eq(1).all()


# --- Δp ----------------------------------------------------------------------------------------------------------------

def test_packaged_ranges_are_the_official_table(ranges):
    official = np.load(REFERENCE / "ranges_voxceleb.npy")
    assert RANGES_PATH.is_file() and ranges.table.dtype == np.float64
    assert np.array_equal(ranges.table, official)
    with pytest.raises(ValueError, match=r"\[54, 2\]"):
        ParamRanges(official[:15])


def test_face_params_layout():
    assert PARAM_NAMES[:4] == ("yaw", "pitch", "roll", "jaw") and PARAM_NAMES[4] == "exp_00"
    assert len(PARAM_NAMES) == 15 and NUM_EXPRESSIONS == 11
    vector = torch.arange(30.0).view(2, 15)
    params = FaceParams.from_vector(vector)
    assert params.yaw.tolist() == [0.0, 15.0] and params.jaw.tolist() == [3.0, 18.0]
    assert params.exp.shape == (2, 11) and params.exp[1, -1] == 29.0
    assert torch.equal(params.to_vector(), vector)


def test_equal_params_give_zero(ranges):
    source = faces()
    assert torch.equal(delta_p(source, source, ranges), torch.zeros(2, 15, dtype=torch.float64))


def with_values(params: FaceParams, **values: float) -> FaceParams:
    """A copy of `params` with some named entries (PARAM_NAMES) set for the whole batch."""
    vector = params.to_vector().clone()
    for name, value in values.items():
        vector[:, PARAM_NAMES.index(name)] = value
    return FaceParams.from_vector(vector)


@pytest.mark.parametrize("name, change, expected", [
    ("yaw", 40.0, 6.0),  # 40 degrees of yaw span the shift scale
    ("yaw", -20.0, -3.0),
    ("pitch", 20.0, 6.0),
    ("roll", -20.0, -6.0),
])
def test_angle_changes_by_hand(ranges, name, change, expected):
    source = faces()
    index = PARAM_NAMES.index(name)
    moved = torch.arange(15) == index
    driving = FaceParams.from_vector(torch.where(moved, source.to_vector() + change, source.to_vector()))
    delta = delta_p(source, driving, ranges)
    assert torch.allclose(delta[:, index], torch.tensor(expected, dtype=torch.float64))
    assert torch.allclose(delta[:, [i for i in range(15) if i != index]], torch.zeros(2, 14, dtype=torch.float64))


@pytest.mark.parametrize("name, row", [("jaw", 3), ("exp_00", 4), ("exp_05", 9), ("exp_10", 14)])
def test_range_ends_map_to_plus_minus_six(ranges, name, row):
    low, high = ranges.table[row]
    source = faces()
    at_min, at_max = with_values(source, **{name: low}), with_values(source, **{name: high})
    index = PARAM_NAMES.index(name)
    assert torch.allclose(delta_p(at_min, at_max, ranges)[:, index], torch.tensor(12.0, dtype=torch.float64))
    assert torch.allclose(delta_p(at_max, at_min, ranges)[:, index], torch.tensor(-12.0, dtype=torch.float64))
    coords = ranges.to_shift_space(at_min)
    assert torch.allclose(coords[:, index], torch.tensor(-6.0, dtype=torch.float64))
    middle = with_values(source, **{name: (low + high) / 2})
    assert torch.allclose(ranges.to_shift_space(middle)[:, index], torch.zeros(2, dtype=torch.float64), atol=1e-12)


def test_expressions_use_their_own_range_and_shift_scale_scales(ranges):
    source, driving = faces(seed=1), faces(seed=2)
    delta = delta_p(source, driving, ranges)
    low, high = ranges.table[4 + 7]
    expected = (driving.exp[:, 7] - source.exp[:, 7]) * 12 / (high - low)
    assert torch.allclose(delta[:, 4 + 7], expected)
    assert torch.allclose(delta_p(source, driving, ranges, shift_scale=3.0), delta / 2)


def test_shift_space_round_trip_and_float32(ranges):
    params = faces(dtype=torch.float32)
    coords = ranges.to_shift_space(params)
    assert coords.dtype == torch.float32
    assert torch.allclose(ranges.from_shift_space(coords).to_vector(), params.to_vector(), atol=1e-5)


def test_matches_the_official_make_shift(ranges):
    """The official recipe, step by step: lines fitted by least squares through (min, -6) and (max, 6)
    (`initialize_directions`), angles scaled by 6 / (40, 20, 20), each side mapped, then subtracted."""
    source, driving = faces(seed=3), faces(seed=4)
    src, drv = source.to_vector(), driving.to_vector()
    expected = torch.zeros(2, 15, dtype=torch.float64)
    for index, scale in enumerate((40, 20, 20)):
        expected[:, index] = drv[:, index] * 6 / scale - src[:, index] * 6 / scale
    for index in range(3, 15):  # jaw, then the expressions
        low, high = ranges.table[index]
        line = np.linalg.lstsq(np.array([[low, 1.0], [high, 1.0]]), np.array([-6.0, 6.0]), rcond=None)[0]
        slope, offset = (float(v) for v in line)
        expected[:, index] = (slope * drv[:, index] + offset) - (slope * src[:, index] + offset)
    assert torch.allclose(delta_p(source, driving, ranges), expected, rtol=1e-10, atol=1e-10)


def test_measured_ranges_are_min_max_by_default_and_quantiles_on_request():
    rng = np.random.default_rng(0)
    params = rng.normal(size=(1000, NUM_PARAMS)) * np.arange(1, NUM_PARAMS + 1)
    measured = ParamRanges.measure(params)
    np.testing.assert_array_equal(measured.table[:NUM_PARAMS, 0], params.min(0))
    np.testing.assert_array_equal(measured.table[:NUM_PARAMS, 1], params.max(0))
    assert np.isnan(measured.table[NUM_PARAMS:]).all() and measured.table.shape == (54, 2)
    inner = ParamRanges.measure(params, (0.05, 0.95)).table[:NUM_PARAMS]
    assert np.all(inner[:, 0] > params.min(0)) and np.all(inner[:, 1] < params.max(0))
    # the measured table drives delta_p: a parameter at its max maps to +6 shift units
    top = torch.as_tensor(params.max(0)[None], dtype=torch.float32)
    coords = measured.to_shift_space(FaceParams.from_vector(top))
    np.testing.assert_allclose(coords[0, 3:].numpy(), 6.0, rtol=1e-5)


def test_ranges_refuse_a_parameter_without_spread():
    params = np.random.default_rng(1).normal(size=(10, NUM_PARAMS))
    params[:, 5] = 0.25
    with pytest.raises(ValueError, match="exp_01"):
        ParamRanges.measure(params)
    with pytest.raises(ValueError, match=r"\[N >= 2, 15\]"):
        ParamRanges.measure(params[:1])
