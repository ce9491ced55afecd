"""e4e encoder: the official state-dict layout of e4e-voxceleb.pt['e'] and parity with the reference code.

The full network has 209M parameters; it is built and filled once for this module (10-15 s on 2 cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.e4e import CHECKPOINT_KEY, Encoder4Editing
from tests.models.parity import assert_fill_matches, fill_from_table, load_fixture

REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference"


def manifest() -> dict:
    return json.loads((REFERENCE / "e4e_voxceleb256_encoder.json").read_text())


def build(device: str) -> Encoder4Editing:
    with torch.device(device):
        return Encoder4Editing(num_layers=50, mode="ir_se", size=256)


@pytest.fixture(scope="module")
def reference_filled() -> tuple[Encoder4Editing, dict, dict[str, np.ndarray]]:
    """The encoder with the reference fill (built on meta, then given uninitialised CPU memory the fill overwrites)."""
    fixture, arrays = load_fixture("e4e_encoder")
    model = build("meta").to_empty(device="cpu").eval()
    fill_from_table(model, fixture)
    return model, fixture, arrays


def test_state_dict_is_the_official_one_entry_by_entry():
    model = build("meta")
    parameters = {name for name, _ in model.named_parameters()}
    ours = [[name, list(t.shape), str(t.dtype).removeprefix("torch."), "parameter" if name in parameters else "buffer"]
            for name, t in model.state_dict().items()]
    assert ours == manifest()["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest()["total_parameter_count"]
    assert model.style_count == 14
    assert model.taps == (6, 20, 23)  # the body indices the reference hard-codes for c1, c2, c3


def test_official_checkpoint_layout_loads_strictly():
    state = {name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
             for name, shape, dtype, _ in manifest()["state_dict"]}
    checkpoint = {CHECKPOINT_KEY: state}  # e4e-voxceleb.pt is read as torch.load(p)['e']
    build("meta").load_state_dict(checkpoint["e"], strict=True, assign=True)
    state["styles.14.linear.weight"] = torch.empty(512, 512, device="meta")
    with pytest.raises(RuntimeError, match="styles.14.linear.weight"):
        build("meta").load_state_dict(state, strict=True, assign=True)


def test_matches_the_reference_code(reference_filled):
    model, fixture, arrays = reference_filled
    assert_fill_matches(model, fixture)
    with torch.no_grad():
        wplus = model(torch.from_numpy(arrays["image"]))
    assert wplus.shape == (1, 14, 512)
    assert np.abs(wplus.numpy() - arrays["wplus"]).max() <= fixture["checks"][0]["tolerance_abs"]


def test_progressive_stage_limits_the_deltas(reference_filled):
    model, _, _ = reference_filled
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # small: only the wiring matters
    with torch.no_grad():
        full = model(image)
        model.progressive_stage = 4
        try:
            partial = model(image)
        finally:
            model.progressive_stage = model.style_count - 1
    w0 = full[:, 0]
    assert all(torch.equal(partial[:, i], w0) for i in range(5, 14))  # no delta above the stage
    torch.testing.assert_close(partial[:, :5], full[:, :5])  # deltas up to it are unchanged
    assert all((full[:, i] - w0).abs().max() > 1e-3 for i in range(1, 14))
