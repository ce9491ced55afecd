"""The Net3D interface: head pose, jaw, expression, shape and 68 landmarks of faces in images, batched.

Every backend (DECA with user weights, the offline landmark fit for real photographs, the regressor learned on the
synthetic world) answers `estimate` with the same `Face3DEstimate`, whose first 15 values are the parameter layout
the directions matrix A reads (`models.directions.PARAM_NAMES`: yaw, pitch, roll in degrees, jaw, exp_00..exp_10).
Angles follow DECA's reading (`models.flame.euler_from_axis_angle`), so all backends share the code after them.

The store keeps `Face3DEstimate.to_array()` per frame as `face3d` float32 [T, 15 + shape_size], with the backend's
name and `code_layout()` in the array's attributes, and the landmarks as `face3d_landmarks` [T, 68, 2].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from models.directions import NUM_PARAMS, PARAM_NAMES, FaceParams


@dataclass(frozen=True)
class Face3DEstimate:
    """What a backend reads from a batch of B face images."""

    params: FaceParams  # yaw, pitch, roll [B] degrees; jaw [B]; exp [B, 11]
    shape: torch.Tensor  # [B, S] the backend's identity (shape) coefficients; S = backend.shape_size (may be 0)
    landmarks: torch.Tensor  # [B, 68, 2] the 68 landmarks in input-image pixels (iBUG 300-W order)
    found: torch.Tensor  # [B] bool: a face was found and the estimate is meaningful

    def __post_init__(self) -> None:
        batch = len(self.params.yaw)
        if self.shape.shape[0] != batch or self.landmarks.shape != (batch, 68, 2) or self.found.shape != (batch,):
            raise ValueError("Face3DEstimate parts disagree on the batch size or layout")

    def __len__(self) -> int:
        return len(self.params.yaw)

    def to_array(self) -> np.ndarray:
        """float32 [B, 15 + S]: the 15 parameters of A in `PARAM_NAMES` order, then the shape coefficients."""
        return torch.cat([self.params.to_vector(), self.shape], dim=1).detach().float().cpu().numpy()

    @classmethod
    def from_array(cls, array: np.ndarray, landmarks: np.ndarray | None = None,
                   found: np.ndarray | None = None) -> Face3DEstimate:
        """The inverse of `to_array` (what a later stage reads back from the store)."""
        values = torch.as_tensor(np.asarray(array, dtype=np.float32))
        batch = len(values)
        return cls(
            params=FaceParams.from_vector(values[:, :NUM_PARAMS]),
            shape=values[:, NUM_PARAMS:],
            landmarks=torch.as_tensor(np.asarray(landmarks, dtype=np.float32)) if landmarks is not None
            else torch.full((batch, 68, 2), float("nan")),
            found=torch.as_tensor(np.asarray(found, dtype=bool)) if found is not None
            else torch.ones(batch, dtype=torch.bool),
        )


def code_layout(shape_size: int) -> list[list]:
    """[[name, size], ...] of the columns of `Face3DEstimate.to_array()`, stored beside the array."""
    return [[name, 1] for name in PARAM_NAMES[:4]] + [["exp", NUM_PARAMS - 4], ["shape", shape_size]]


class Face3DBackend(Protocol):
    """A Net3D: face images to `Face3DEstimate`."""

    name: str  # goes into the store's attributes and next to every APD/AED figure
    shape_size: int  # S, the number of identity coefficients it reports

    def estimate(self, images: np.ndarray, landmarks: np.ndarray | None = None) -> Face3DEstimate:
        """images: uint8 RGB [B, H, W, 3] (aligned 256x256 crops from the store, or any face image).
        landmarks: optional float [B, 68, 2] in image pixels (the store has them); a backend that needs landmarks
        detects them itself when they are not given. A face it cannot read gets found=False, never an exception."""
        ...
