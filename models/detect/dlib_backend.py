"""Offline default detector: dlib's HOG frontal-face detector (no weight file) + the packaged 68-point predictor."""

from __future__ import annotations

import cv2
import numpy as np

from models.detect.base import Face
from models.detect.landmarks import LandmarkPredictor

MIN_DETECT_SIDE = 400  # below this, upsample once: HOG misses faces smaller than ~80 px
THRESHOLD = 0.3  # HOG margin: faces here score 1 to 2, the false positives seen (clothing, hands) below 0.1


class DlibDetector:
    name = "dlib"

    def __init__(self, max_side: int = 640, threshold: float = THRESHOLD):
        import dlib

        self.max_side = max_side
        self.threshold = threshold
        self._detect = dlib.get_frontal_face_detector()
        self._landmarks = LandmarkPredictor()

    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        return [self._detect_one(np.ascontiguousarray(frame)) for frame in frames]

    def _detect_one(self, frame: np.ndarray) -> list[Face]:
        scale = min(1.0, self.max_side / max(frame.shape[:2]))
        small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else frame
        upsample = 1 if max(small.shape[:2]) < MIN_DETECT_SIDE else 0
        rects, scores, _ = self._detect.run(small, upsample, self.threshold)
        faces = []
        for rect, score in zip(rects, scores):
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32) / scale
            faces.append(Face(box=box, score=float(score), landmarks=self._landmarks(frame, box)))
        return faces
