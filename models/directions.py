"""The direction matrix A and Δp: how a change of head pose and expression becomes a shift of W+.

Δp holds 15 differences, driving minus source, in "shift units" where ±shift_scale (6) spans a parameter's usual
range:

    0 yaw, 1 pitch, 2 roll    Euler angles in degrees times shift_scale / (40, 20, 20)
    3 jaw                     DECA's jaw opening (pose[3]), mapped linearly from its [min, max] onto [-6, 6]
    4..14 exp_00..exp_10      the first 11 DECA expression coefficients, mapped the same way

The [min, max] table (`ParamRanges`) was measured by the authors over generated faces and ships as
`models/data/ranges_voxceleb.npy`. A is one linear layer, Δp [B, 15] -> shift [B, 8, 512], added to W+ layers
0..7 (`shift_wplus`); layers 8..13 keep the source's appearance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

NUM_ANGLES = 3
NUM_EXPRESSIONS = 11
PARAM_NAMES = ("yaw", "pitch", "roll", "jaw", *(f"exp_{i:02d}" for i in range(NUM_EXPRESSIONS)))
NUM_PARAMS = len(PARAM_NAMES)  # 15, the official `learned_directions`

SHIFT_SCALE = 6.0
ANGLE_SCALES = (40.0, 20.0, 20.0)  # degrees of yaw, pitch, roll that span SHIFT_SCALE (official voxceleb_dict)
RANGES_PATH = Path(__file__).parent / "data" / "ranges_voxceleb.npy"

# rows of the ranges table
JAW_ROW = 3
FIRST_EXPRESSION_ROW = 4


@dataclass(frozen=True)
class FaceParams:
    """The 15 face parameters that drive A, for a batch of faces, by name."""

    yaw: torch.Tensor  # [B] degrees
    pitch: torch.Tensor  # [B] degrees
    roll: torch.Tensor  # [B] degrees
    jaw: torch.Tensor  # [B] DECA pose[3], the jaw's opening rotation
    exp: torch.Tensor  # [B, 11] the first DECA expression coefficients

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> FaceParams:
        """Split [B, 15] in `PARAM_NAMES` order (views, no copy)."""
        if vector.shape[-1] != NUM_PARAMS:
            raise ValueError(f"face parameters have {NUM_PARAMS} values, got {vector.shape[-1]}")
        yaw, pitch, roll, jaw = vector[:, :4].unbind(-1)
        return cls(yaw, pitch, roll, jaw, vector[:, 4:])

    def to_vector(self) -> torch.Tensor:
        """[B, 15] in `PARAM_NAMES` order."""
        return torch.cat([torch.stack([self.yaw, self.pitch, self.roll, self.jaw], -1), self.exp], -1)


@dataclass(frozen=True)
class ParamRanges:
    """Per-parameter [min, max] (float64 [54, 2]: rows 0-2 yaw, pitch, roll in degrees, 3 jaw, 4-53 the 50 DECA
    expression coefficients; columns min, max) and the maps between face parameters and shift units."""

    table: np.ndarray

    def __post_init__(self) -> None:
        if self.table.shape != (FIRST_EXPRESSION_ROW + 50, 2):
            raise ValueError(f"a ranges table is [54, 2], got {list(self.table.shape)}")
        used = self.table[JAW_ROW:FIRST_EXPRESSION_ROW + NUM_EXPRESSIONS]
        if not np.all(used[:, 1] > used[:, 0]):
            raise ValueError("every jaw and expression range needs max > min")

    @classmethod
    def load(cls, path: str | Path = RANGES_PATH) -> ParamRanges:
        """The table from a .npy file; by default the official VoxCeleb one that the released A was trained with.
        Numbers only: an object array (a pickle inside, which could run code) is refused unread."""
        try:
            table = np.load(path, allow_pickle=False)
        except ValueError as error:  # numpy's refusal of an object array, or a file that is not .npy
            raise ValueError(f"{path} is not a ranges table of numbers: {error}") from None
        if not isinstance(table, np.ndarray) or table.dtype.kind not in "fiu":
            raise ValueError(f"{path} is not a ranges table of numbers ({type(table).__name__})")
        return cls(table.astype(np.float64))

    @classmethod
    def of_directions(cls, entries: Mapping[str, Any]) -> ParamRanges:
        """The table a directions file's entries carry (`ranges`: the project's A records the table of its own
        Net3D), else the official one (the released A_matrix.pt has none)."""
        return cls(np.asarray(entries["ranges"], np.float64)) if "ranges" in entries else cls.load()

    @classmethod
    def measure(cls, params: np.ndarray, quantiles: tuple[float, float] = (0.0, 1.0)) -> ParamRanges:
        """The table of a dataset: per parameter, the [low, high] quantiles of face parameters [N, 15] in
        `PARAM_NAMES` order. (0, 1) is min and max, as the official `extract_statistics` takes them; narrower
        quantiles keep a few bad estimates from stretching a range. Rows of expressions past the 11 that A reads
        are NaN: nothing measured them."""
        params = np.asarray(params, dtype=np.float64)
        if params.ndim != 2 or params.shape[1] != NUM_PARAMS or len(params) < 2:
            raise ValueError(f"measuring ranges needs face parameters [N >= 2, {NUM_PARAMS}], got {list(params.shape)}")
        table = np.full((FIRST_EXPRESSION_ROW + 50, 2), np.nan)
        table[:NUM_PARAMS] = np.quantile(params, quantiles, axis=0).T
        constant = [name for name, (low, high) in zip(PARAM_NAMES, table) if not high > low]
        if constant:
            raise ValueError(f"no spread to measure a range from in {', '.join(constant)}: every frame has the same "
                             "value (too few frames, or a backend that does not estimate it)")
        return cls(table)

    def affine(self, shift_scale: float = SHIFT_SCALE) -> tuple[np.ndarray, np.ndarray]:
        """slope, offset float64 [15] of the map to shift units: angles are scaled; jaw and expressions go from
        [min, max] onto [-shift_scale, shift_scale] (the official `initialize_directions` fits this line through the
        two points; it writes ±6 for the jaw, which is shift_scale for the released A)."""
        low, high = self.table[JAW_ROW:FIRST_EXPRESSION_ROW + NUM_EXPRESSIONS].T
        slope = np.concatenate([shift_scale / np.asarray(ANGLE_SCALES), 2 * shift_scale / (high - low)])
        offset = np.concatenate([np.zeros(NUM_ANGLES), -shift_scale - slope[NUM_ANGLES:] * low])
        return slope, offset

    def _affine(self, shift_scale: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slope, offset = self.affine(shift_scale)
        return (torch.as_tensor(slope, dtype=like.dtype, device=like.device),
                torch.as_tensor(offset, dtype=like.dtype, device=like.device))

    def to_shift_space(self, params: FaceParams, shift_scale: float = SHIFT_SCALE) -> torch.Tensor:
        """Face parameters -> [B, 15] shift units."""
        vector = params.to_vector()
        slope, offset = self._affine(shift_scale, vector)
        return vector * slope + offset

    def from_shift_space(self, coords: torch.Tensor, shift_scale: float = SHIFT_SCALE) -> FaceParams:
        """The inverse: [B, 15] shift units -> face parameters (e.g. the target of a one-direction shift)."""
        slope, offset = self._affine(shift_scale, coords)
        return FaceParams.from_vector((coords - offset) / slope)


class ShiftMap(nn.Module):
    """A ranges table's map between face parameters [B, 15] (`PARAM_NAMES` order) and A's shift units, held as
    device tensors: the same numbers as `ParamRanges.to_shift_space`, without numpy or a host-to-device copy per
    call, so it compiles (torch.compile) and never waits for the device. Its buffers are not saved."""

    def __init__(self, ranges: ParamRanges, shift_scale: float = SHIFT_SCALE, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.ranges, self.shift_scale = ranges, shift_scale
        slope, offset = ranges.affine(shift_scale)
        self.register_buffer("slope", torch.as_tensor(slope, dtype=dtype), persistent=False)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=dtype), persistent=False)

    def to_shift(self, params: torch.Tensor) -> torch.Tensor:
        """Face parameters [B, 15] -> shift units [B, 15]."""
        return params * self.slope.to(params.dtype) + self.offset.to(params.dtype)

    def from_shift(self, coords: torch.Tensor) -> torch.Tensor:
        """Shift units [B, 15] -> face parameters [B, 15]."""
        return (coords - self.offset.to(coords.dtype)) / self.slope.to(coords.dtype)

    def delta(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        """Δp [B, 15] as `delta_p`: each side mapped to shift units, then subtracted."""
        return self.to_shift(driving) - self.to_shift(source)


def delta_p(source: FaceParams, driving: FaceParams, ranges: ParamRanges,
            shift_scale: float = SHIFT_SCALE) -> torch.Tensor:
    """Δp [B, 15]: the driving face's parameters minus the source's, each first mapped to shift units (map, then
    subtract, as the official `Utilities_train.make_shift_vector` and `Inference.make_shift` do)."""
    return ranges.to_shift_space(driving, shift_scale) - ranges.to_shift_space(source, shift_scale)


class DirectionMatrix(nn.Module):
    """A: one linear layer from Δp [B, input_dim] to a latent shift, [B, num_layers, shift_dim] in W+ mode.

    State dict (official `A_matrix.pt['A_matrix']`): `linear.weight` [num_layers * shift_dim, input_dim] and
    `linear.bias`. Weights start N(0, 0.03) as in the official code; the bias keeps nn.Linear's initialisation.
    """

    def __init__(self, shift_dim: int = 512, input_dim: int = NUM_PARAMS, out_dim: int | None = None,
                 w_plus: bool = True, bias: bool = True, num_layers: int = 8):
        super().__init__()
        self.shift_dim = shift_dim
        self.input_dim = input_dim
        self.out_dim = out_dim if out_dim is not None else shift_dim
        self.w_plus = w_plus
        self.num_layers = num_layers
        self.linear = nn.Linear(input_dim, self.out_dim * (num_layers if w_plus else 1), bias=bias)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.03)

    def forward(self, delta_p: torch.Tensor) -> torch.Tensor:
        out = self.linear(delta_p.view(-1, self.input_dim))
        return out.view(len(out), self.num_layers, self.out_dim) if self.w_plus else out


def shift_wplus(wplus: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """W+ [B, L, D] with the shift added: a [B, K, D] shift moves layers 0..K-1 only; a [B, D] one moves every
    layer (the official `get_shifted_latent_code`). Returns a new tensor."""
    if shift.ndim == 2:
        return wplus + shift.unsqueeze(1)
    layers = shift.shape[1]
    return torch.cat([wplus[:, :layers] + shift, wplus[:, layers:]], dim=1)


# --- the official checkpoint dict (A_matrix.pt) ------------------------------------------------------------------------

CHECKPOINT_KEYS = ("A_matrix", "learned_directions", "shift_scale", "w_plus", "num_layers_shift")  # + optional shift_dim


def from_checkpoint(checkpoint: Mapping[str, Any]) -> tuple[DirectionMatrix, float]:
    """A built from an already loaded `A_matrix.pt` dict and loaded strictly, with its shift_scale.

    `shift_dim` is read by the official inference but never written by its training code; without it, it follows
    from the weight's rows.
    """
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise KeyError(f"not a direction-matrix checkpoint: missing {missing}; it has {sorted(checkpoint)}")
    state = checkpoint["A_matrix"]
    w_plus, num_layers = bool(checkpoint["w_plus"]), int(checkpoint["num_layers_shift"])
    shift_dim = checkpoint.get("shift_dim")
    if shift_dim is None:
        rows = state["linear.weight"].shape[0]
        shift_dim = rows // num_layers if w_plus else rows
    matrix = DirectionMatrix(shift_dim=int(shift_dim), input_dim=int(checkpoint["learned_directions"]),
                             w_plus=w_plus, bias="linear.bias" in state, num_layers=num_layers)
    matrix.load_state_dict(state, strict=True)
    return matrix, float(checkpoint["shift_scale"])


def to_checkpoint(matrix: DirectionMatrix, shift_scale: float = SHIFT_SCALE, step: int | None = None) -> dict[str, Any]:
    """The official `A_matrix.pt` dict for `matrix` (with `shift_dim`, so the official inference reads it too)."""
    checkpoint: dict[str, Any] = {
        "A_matrix": {name: tensor.detach().cpu().clone() for name, tensor in matrix.state_dict().items()},
        "learned_directions": matrix.input_dim,
        "shift_scale": float(shift_scale),
        "w_plus": matrix.w_plus,
        "num_layers_shift": matrix.num_layers,
        "shift_dim": matrix.shift_dim,
    }
    if step is not None:
        checkpoint["step"] = step
    return checkpoint
