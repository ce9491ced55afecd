"""RetinaFace (ResNet-50) from the `retinaface-pytorch` package, with weights the user supplies.

The package would download its weights at run time; here they must already be on disk, at
`<weights_dir>/retinaface/retinaface_resnet50_2020-07-20.pth` (the state dict inside the package's release zip).
Landmarks still come from the 68-point predictor: RetinaFace itself gives only 5 points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.detect.base import Face, MissingWeightsError
from models.detect.landmarks import LandmarkPredictor

WEIGHTS_FILE = Path("retinaface") / "retinaface_resnet50_2020-07-20.pth"
SOURCE = "https://github.com/ternaus/retinaface/releases/download/0.01/retinaface_resnet50_2020-07-20-f168fae3c.zip"


def weights_path(weights_dir: Path) -> Path:
    return Path(weights_dir) / WEIGHTS_FILE


def build_model(max_side: int, device: str = "cpu"):
    """The package's model wrapper with random weights (its constructor downloads nothing)."""
    from retinaface.predict_single import Model

    return Model(max_size=max_side, device=device)


class RetinaFaceDetector:
    name = "retinaface"

    def __init__(self, weights_dir: Path, max_side: int = 640, device: str = "cpu",
                 confidence: float = 0.7):
        import torch

        path = weights_path(weights_dir)
        if not path.is_file():
            raise MissingWeightsError(
                f"RetinaFace weights not found at {path}. Download {SOURCE}, unzip it, and put the .pth file "
                f"there (or pass --weights-dir pointing to a folder with {WEIGHTS_FILE})."
            )
        self._model = build_model(max_side, device)
        self._model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        self._model.eval()
        self.confidence = confidence
        self._landmarks = LandmarkPredictor()

    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        results = []
        for frame in frames:
            frame = np.ascontiguousarray(frame)
            found = self._model.predict_jsons(frame, confidence_threshold=self.confidence)
            results.append([
                Face(box=np.asarray(item["bbox"], np.float32), score=float(item["score"]),
                     landmarks=self._landmarks(frame, np.asarray(item["bbox"], np.float32)))
                for item in found if len(item["bbox"]) == 4
            ])
        return results
