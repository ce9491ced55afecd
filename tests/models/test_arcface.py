"""ArcFace IR-SE-50: the official state-dict layout, numerical parity with the reference code, the identity crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.arcface import Backbone, arcface_input
from tests.models.parity import fill_for_parity

REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference"


def official_entries() -> list[list]:
    return json.loads((REFERENCE / "arcface_ir_se50.json").read_text())["state_dict"]


def build(device: str = "cpu") -> Backbone:
    with torch.device(device):
        return Backbone(input_size=112, num_layers=50, mode="ir_se", drop_ratio=0.6, affine=True)


def test_state_dict_is_the_official_one_entry_by_entry():
    model = build("meta")
    parameters = {name for name, _ in model.named_parameters()}
    ours = [[name, list(t.shape), str(t.dtype).removeprefix("torch."), "parameter" if name in parameters else "buffer"]
            for name, t in model.state_dict().items()]
    assert ours == official_entries()
    assert sum(p.numel() for p in model.parameters()) == 43_797_696


def test_bare_official_state_dict_loads_strictly():
    checkpoint = {name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
                  for name, shape, dtype, _ in official_entries()}  # model_ir_se50.pth is a bare state dict
    build("meta").load_state_dict(checkpoint, strict=True, assign=True)
    del checkpoint["output_layer.3.weight"]
    with pytest.raises(RuntimeError, match="output_layer.3.weight"):
        build("meta").load_state_dict(checkpoint, strict=True, assign=True)


@pytest.mark.parametrize(("num_layers", "units"), [(50, 24), (100, 49), (152, 50)])
def test_plain_ir_bodies_have_no_squeeze_excitation(num_layers, units):
    with torch.device("meta"):
        model = Backbone(num_layers=num_layers, mode="ir")
    assert len(model.body) == units
    assert not any(".res_layer.5." in name for name in model.state_dict())
    assert [unit.res_layer[3].stride for unit in model.body].count((2, 2)) == 4  # one downsampling per stage


def test_matches_the_reference_code():
    model = build()
    arrays, tolerance = fill_for_parity(model, "arcface_ir_se50")
    with torch.no_grad():
        image = torch.from_numpy(arrays["image"])
        embedding, unnormalised = model(image), model.embed_unnormalised(image)
    assert np.abs(embedding.numpy() - arrays["embedding"]).max() <= tolerance["embedding"]
    assert np.abs(unnormalised.numpy() - arrays["embedding_pre_l2norm"]).max() <= tolerance["embedding_pre_l2norm"]
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))


def test_identity_crop_takes_the_official_window():
    rows = torch.arange(256.0)[:, None].expand(256, 256)
    cols = torch.arange(256.0)[None, :].expand(256, 256)
    frames = torch.stack([rows, cols, torch.full((256, 256), 0.25)])[None]
    faces = arcface_input(frames)
    assert faces.shape == (1, 3, 112, 112)
    # 188 rows pooled into 112 bins: the first bin holds rows 35-36, the last rows 221-222 (adaptive pooling)
    assert faces[0, 0, 0, 0] == 35.5 and faces[0, 0, -1, 0] == 221.5
    assert faces[0, 1, 0, 0] == 32.5 and faces[0, 1, 0, -1] == 218.5
    assert torch.all(faces[0, 2] == 0.25)
    with pytest.raises(ValueError, match="256x256"):
        arcface_input(torch.zeros(1, 3, 512, 512))
