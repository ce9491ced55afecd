"""The documented fill rule of the parity fixtures (tests/fixtures/reference/parity/README.md), for any network.

Every state-dict entry is filled by NAME with CPU `torch.randn` seeded by the CRC-32 of the name, then shaped by the
row of the fixture's `fill_rule_table`: `value = offset + scale * (|r| if abs else r)`. Rule `zeros` (integer
counters) gives zeros; rule `constructed` (the StyleGAN2 FIR kernels) keeps what the module's constructor made, so
`assert_fill_matches` then proves that our constructor makes the same kernel as the official one.

Usage:
    fixture, arrays = load_fixture("e4e_encoder")
    fill_from_table(model, fixture)
    assert_fill_matches(model, fixture)
    output = model(torch.from_numpy(arrays["image"]))
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PARITY_DIR = Path(__file__).parents[1] / "fixtures" / "reference" / "parity"


def load_fixture(stem: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The fixture's JSON and all its npz arrays (read eagerly, so no file stays open), e.g. `load_fixture("e4e_encoder")`."""
    fixture = json.loads((PARITY_DIR / f"{stem}.json").read_text())
    with np.load(PARITY_DIR / f"{stem}.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    return fixture, arrays


def reference_randn(name: str, shape: list[int]) -> torch.Tensor:
    """The rule's `r`: float32 CPU randn from a generator seeded by the unsigned CRC-32 of the UTF-8 name."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def rule_value(row: dict[str, Any]) -> torch.Tensor | None:
    """The value one table row prescribes, or None for `constructed` (the module keeps its own value)."""
    if row["rule"] == "constructed":
        return None
    dtype = getattr(torch, row["dtype"])
    if row["rule"] == "zeros":
        return torch.zeros(row["shape"], dtype=dtype)
    r = reference_randn(row["name"], row["shape"])
    # Same float32 arithmetic as the reference: tensor times a Python float, then plus a Python float.
    return row["offset"] + row["scale"] * (r.abs() if row["abs"] else r)


def _checked_state(module: nn.Module, fixture: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The module's state dict, after checking that it has exactly the table's entries."""
    state = module.state_dict()
    table_names = [row["name"] for row in fixture["fill_rule_table"]]
    missing = sorted(set(table_names) - set(state))
    unexpected = sorted(set(state) - set(table_names))
    assert not missing and not unexpected, f"state dict differs from the table: missing {missing}, unexpected {unexpected}"
    return state


@torch.no_grad()
def fill_from_table(module: nn.Module, fixture: dict[str, Any]) -> None:
    """Overwrite every state-dict entry of `module` in place by the fixture's `fill_rule_table` (`constructed` kept)."""
    state = _checked_state(module, fixture)
    for row in fixture["fill_rule_table"]:
        value = rule_value(row)
        if value is None:
            continue
        target = state[row["name"]]
        assert list(target.shape) == row["shape"], f"{row['name']}: shape {list(target.shape)} != {row['shape']}"
        target.copy_(value)


def assert_fill_matches(module: nn.Module, fixture: dict[str, Any]) -> None:
    """Check every entry against the table's `check_sum`, `check_sum_abs` (float64 sums) and `check_first4`."""
    state = _checked_state(module, fixture)
    for row in fixture["fill_rule_table"]:
        values = state[row["name"]].detach().to("cpu", torch.float64).flatten()
        total, total_abs = values.sum().item(), values.abs().sum().item()
        # Sums of float32 values in float64 agree to rounding of the summation order only.
        slack = 1e-9 * max(1.0, row["check_sum_abs"])
        assert math.isclose(total, row["check_sum"], abs_tol=slack), f"{row['name']}: sum {total} != {row['check_sum']}"
        assert math.isclose(total_abs, row["check_sum_abs"], abs_tol=slack), (
            f"{row['name']}: sum |x| {total_abs} != {row['check_sum_abs']}")
        first4 = values[:4].tolist()
        assert first4 == row["check_first4"], f"{row['name']}: first values {first4} != {row['check_first4']}"


def fill_for_parity(module: nn.Module, stem: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Fill `module` by fixture `stem`'s rule, check the fill, switch to eval; return the fixture's arrays and each
    output's tolerance (by output name)."""
    fixture, arrays = load_fixture(stem)
    fill_from_table(module, fixture)
    assert_fill_matches(module, fixture)
    module.eval()
    return arrays, {check["output"]: check["tolerance_abs"] for check in fixture["checks"]}
