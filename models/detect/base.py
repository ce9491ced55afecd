"""The face detector interface: all faces of each frame, with a box, a score and 68 landmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # float32 [4] x0, y0, x1, y1 in frame pixels
    score: float
    landmarks: np.ndarray  # float32 [68, 2] x, y in frame pixels (iBUG 300-W order)

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


class FaceDetector(Protocol):
    name: str

    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        """Faces of each frame of a uint8 RGB batch [B, H, W, 3]."""
        ...


class MissingWeightsError(FileNotFoundError):
    """A detector's weights are not where they must be put; the message says where."""


DETECTORS = ("dlib", "retinaface")


def build_detector(name: str, weights_dir: Path | None = None, max_side: int = 640) -> FaceDetector:
    """A detector by name. `max_side`: frames are downscaled to this longest side for detection only."""
    if name == "dlib":
        from models.detect.dlib_backend import DlibDetector

        return DlibDetector(max_side=max_side)
    if name == "retinaface":
        from models.detect.retinaface_backend import RetinaFaceDetector

        if weights_dir is None:
            raise MissingWeightsError("the retinaface detector needs a weights directory (--weights-dir)")
        return RetinaFaceDetector(weights_dir=weights_dir, max_side=max_side)
    raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
