"""MTCNN from `facenet-pytorch`, whose three small networks' weights ship inside its wheel: a batched detector that
runs on CUDA when there is one (and on the CPU too), with nothing to download.

The package's cascade (an image pyramid through P-Net, then R-Net and O-Net on the candidates) takes a whole batch
of equally sized frames in one call; it gives boxes, a probability and five points (eye centres, nose tip, mouth
corners) per face. As for RetinaFace, the 68 landmarks come from dlib's predictor started from a box placed by the
five points and refined once (`models.detect.landmarks`). Its pyramid reaches faces of `min_face_size` pixels at the
detection scale (20 at the working scale of a 1280 px frame: 40 px faces).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from models.detect.base import ScaledDetector
from models.detect.landmarks import LandmarkPredictor, hog_box_from_five_points

CONFIDENCE = 0.9  # O-Net's face probability: the cascade's own last threshold is 0.7, which lets through a few hands


class MtcnnDetector(ScaledDetector):
    """MTCNN boxes and five points at the detection scale, whole batches per call; 68 dlib landmarks."""

    name = "mtcnn"

    def __init__(self, max_side: int = 640, device: str | None = None, confidence: float = CONFIDENCE,
                 min_face_size: int = 20, batch_size: int = 32):
        try:
            from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
        except ModuleNotFoundError:
            raise ModuleNotFoundError("the mtcnn detector needs the facenet-pytorch package: "
                                      "pip install --no-deps facenet-pytorch") from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with warnings.catch_warnings():  # the package reads its own bundled state dicts with torch.load
            warnings.simplefilter("ignore", FutureWarning)
            self.networks = [network().to(self.device).eval().requires_grad_(False) for network in (PNet, RNet, ONet)]
        self.max_side = max_side
        self.confidence = confidence
        self.min_face_size = min_face_size
        self.batch_size = batch_size  # frames per call: bounds the pyramid's memory
        self._landmarks = LandmarkPredictor()

    @torch.no_grad()
    def _find(self, images: list[np.ndarray], upsample: bool):
        from facenet_pytorch.models.utils.detect_face import detect_face

        found = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack(images[start : start + self.batch_size])
            boxes, points = detect_face(batch, self.min_face_size, *self.networks, [0.6, 0.7, 0.7], 0.709,
                                        self.device)
            for image_boxes, image_points in zip(boxes, points):
                found.append([(box[:4].astype(np.float64), float(box[4]), five.astype(np.float64))
                              for box, five in zip(image_boxes, image_points) if box[4] >= self.confidence])
        return found

    def _landmarks_for(self, frame: np.ndarray, box: np.ndarray, five: np.ndarray | None) -> np.ndarray:
        return self._landmarks.predict_refined(frame, hog_box_from_five_points(five))
