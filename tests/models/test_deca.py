"""DECA's E_flame: the official layout inside deca_model.tar, parity with the reference code, the code split, the
input crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.deca import CHECKPOINT_KEY, DecaCode, ResnetEncoder, deca_crop_box, deca_input
from tests.models.parity import fill_for_parity

REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference"


def manifest() -> dict:
    return json.loads((REFERENCE / "deca_encoder.json").read_text())


def build(device: str = "cpu", outsize: int = 236) -> ResnetEncoder:
    with torch.device(device):
        return ResnetEncoder(outsize=outsize)


# E_detail is the same class with a 128-d head; the pipeline uses only E_flame (D_detail, the detail decoder, is not
# part of the method and is not implemented here).
@pytest.mark.parametrize("entry, outsize", [("E_flame", 236), ("E_detail", 128)])
def test_state_dict_is_the_official_one_entry_by_entry(entry, outsize):
    model = build("meta", outsize)
    parameters = {name for name, _ in model.named_parameters()}
    ours = [[name, list(t.shape), str(t.dtype).removeprefix("torch."), "parameter" if name in parameters else "buffer"]
            for name, t in model.state_dict().items()]
    assert ours == manifest()[entry]["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest()[entry]["total_parameter_count"]


def test_e_flame_entry_of_deca_model_tar_loads_strictly():
    meta = lambda entries: {name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")  # noqa: E731
                            for name, shape, dtype, _ in entries}
    checkpoint = {key: meta(manifest()[key]["state_dict"]) for key in ("E_flame", "E_detail", "D_detail")}
    build("meta").load_state_dict(checkpoint[CHECKPOINT_KEY], strict=True, assign=True)
    # E_detail has the same trunk but a 128-d head: its entries must not pass for E_flame's
    with pytest.raises(RuntimeError, match="size mismatch"):
        build("meta").load_state_dict(checkpoint["E_detail"], strict=True, assign=True)


def test_matches_the_reference_code():
    model = build()
    arrays, tolerance = fill_for_parity(model, "deca_E_flame")
    with torch.no_grad():
        code = model(torch.from_numpy(arrays["image"]))
    assert np.abs(code.numpy() - arrays["code"]).max() <= tolerance["code"]


def test_code_splits_into_deca_layout():
    vector = torch.arange(2 * 236, dtype=torch.float32).reshape(2, 236)
    code = DecaCode.from_vector(vector)
    assert code.shape[0, [0, -1]].tolist() == [0, 99]
    assert code.tex[0, [0, -1]].tolist() == [100, 149]
    assert code.exp[0, [0, -1]].tolist() == [150, 199]
    assert code.pose[0].tolist() == [200, 201, 202, 203, 204, 205]
    assert code.global_pose[0].tolist() == [200, 201, 202] and code.jaw_pose[0].tolist() == [203, 204, 205]
    assert code.cam[0].tolist() == [206, 207, 208]
    assert code.light.shape == (2, 9, 3) and code.light[0, 0].tolist() == [209, 210, 211]
    assert torch.equal(code.to_vector(), vector)
    with pytest.raises(ValueError, match="236"):
        DecaCode.from_vector(torch.zeros(1, 200))


def test_input_crop_is_the_landmark_square_scaled_to_224():
    # landmarks spanning x 100..160, y 80..140: side floor(60 * 1.1 * 1.25) = 82 around (130, 110)
    landmarks = torch.tensor([[[100.0, 80.0], [160.0, 140.0], [130.0, 100.0]]])
    centre, side = deca_crop_box(landmarks)
    assert centre.tolist() == [[130.0, 110.0]] and side.tolist() == [82.0]

    xs = torch.arange(256.0)[None, :].expand(256, 256)
    ys = torch.arange(256.0)[:, None].expand(256, 256)
    images = torch.stack([xs, ys, torch.full((256, 256), 255.0)])[None]
    crop = deca_input(images, landmarks)
    assert crop.shape == (1, 3, 224, 224)
    # output pixel u samples x = 89 + u * 82 / 223 (and y = 69 + v * 82 / 223), values divided by 255
    u = torch.arange(224.0)
    torch.testing.assert_close(crop[0, 0, 5], (89 + u * 82 / 223) / 255)
    torch.testing.assert_close(crop[0, 1, :, 7], (69 + u * 82 / 223) / 255)
    assert torch.allclose(crop[0, 2], torch.ones(224, 224))


def test_input_crop_pads_with_black_outside_the_frame():
    landmarks = torch.tensor([[[0.0, 0.0], [40.0, 40.0]]])  # side 55 centred on (20, 20): starts at -7.5
    crop = deca_input(torch.full((1, 3, 64, 64), 255.0), landmarks)
    assert torch.all(crop[0, :, :20, :20] == 0)  # x, y < -2.5: wholly outside
    torch.testing.assert_close(crop[0, :, 40:, 40:], torch.ones(3, 184, 184))
