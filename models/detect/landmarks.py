"""68-point landmarks from dlib's shape predictor, whose weights ship inside the `face-recognition-models` wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def packaged_model(filename: str) -> Path:
    """Path of a model file inside face-recognition-models, found without importing it (its import needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face-recognition-models is not installed (pip install face-recognition-models)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.exists():
        raise FileNotFoundError(f"{filename} missing from the face-recognition-models package at {path}")
    return path


class LandmarkPredictor:
    """iBUG 68-point landmarks of a face, given its box in the full-resolution frame."""

    def __init__(self):
        import dlib

        self._dlib = dlib
        self._predict = dlib.shape_predictor(str(packaged_model("shape_predictor_68_face_landmarks.dat")))

    def __call__(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        rect = self._dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._predict(frame, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
