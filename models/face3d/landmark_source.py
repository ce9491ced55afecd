"""The 68 landmarks every Net3D backend starts from: the caller's (the store keeps them), else dlib's.

All three backends place their input crop (DECA's square, the regressor's paper crop) or their fit on 68 landmarks,
so they share this one resolver: given landmarks are used as they are (a row of NaN means "no face here"); missing
ones come from the dlib HOG detector + 68-point predictor of `models.detect`, largest face per image.
"""

from __future__ import annotations

import numpy as np


class LandmarkSource:
    """Landmarks [B, 68, 2] and found flags [B] for a batch of images; the detector is built on first need."""

    def __init__(self, detector=None):
        self._detector = detector

    @property
    def detector(self):
        if self._detector is None:
            from models.detect import build_detector

            self._detector = build_detector("dlib")
        return self._detector

    def resolve(self, images: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """float32 [B, 68, 2] (NaN where no face) and bool [B]."""
        if landmarks is not None:
            points = np.asarray(landmarks, np.float32).reshape(len(images), 68, 2)
            return points, np.isfinite(points).all(axis=(1, 2))
        points = np.full((len(images), 68, 2), np.nan, np.float32)
        for index, faces in enumerate(self.detector.detect(np.asarray(images, np.uint8))):
            if faces:
                points[index] = max(faces, key=lambda face: face.area).landmarks
        return points, np.isfinite(points).all(axis=(1, 2))


def fill_missing(landmarks: np.ndarray, found: np.ndarray, height: int, width: int) -> np.ndarray:
    """Landmarks with the rows of faces not found replaced by a centred placeholder face (so a batch still runs
    through a network in one piece; those rows are reported found=False)."""
    if found.all():
        return landmarks
    placeholder = np.array([[0.3 * width, 0.3 * height], [0.7 * width, 0.8 * height]], np.float32)
    filled = landmarks.copy()
    filled[~found] = np.resize(placeholder, (68, 2))
    return filled
