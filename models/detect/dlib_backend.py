"""Offline default detector: dlib's HOG frontal-face detector (no weight file) + the packaged 68-point predictor.

HOG rather than dlib's MMOD CNN detector (also shipped in face-recognition-models), measured on this machine's CPU
over 18 frames (4 photographs, 5 demo clips, each at 256 and 640 px): both found the one face in every frame, HOG in
8-26 ms and MMOD in 0.5-1.8 s, 70 times slower. With the photographs at 400 px and rolled by up to 35 degrees, both
found the same faces; at 45 degrees MMOD found 3 of 4, HOG 2. dlib-bin is built without CUDA, so MMOD would be as
slow on a GPU machine. HOG is a frontal detector (not measured here on profiles, which it is known to miss):
footage with strong head turns is better served by the retinaface backend.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from models.detect.base import Face, ScaledDetector
from models.detect.landmarks import LandmarkPredictor

THRESHOLD = 0.3  # HOG margin: faces here score 1 to 2, the false positives seen (clothing, a hand) below 0.1


class DlibDetector(ScaledDetector):
    """HOG boxes at the detection scale (`ScaledDetector`), 68 landmarks on the full-resolution frame."""

    name = "dlib"

    def __init__(self, max_side: int = 640, threshold: float = THRESHOLD, threads: int | None = None):
        import dlib

        self.max_side = max_side
        self.threshold = threshold
        # dlib releases the GIL while it works, so the frames of a batch run in parallel threads
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dlib") if self.threads > 1 else None
        self._dlib = dlib
        self._local = threading.local()
        self._landmarks = LandmarkPredictor()

    def _hog(self):
        """This thread's HOG detector: dlib's object detector keeps scan state, so threads must not share one."""
        if not hasattr(self._local, "hog"):
            self._local.hog = self._dlib.get_frontal_face_detector()
        return self._local.hog

    def detect(self, frames: np.ndarray, scale: float | None = None) -> list[list[Face]]:
        """All faces of each frame of a uint8 RGB batch [B, H, W, 3], the frames of a batch in parallel threads."""
        if self._pool is None or len(frames) <= 1:
            return super().detect(frames, scale)
        return list(self._pool.map(lambda frame: super(DlibDetector, self).detect(frame[None], scale)[0], frames))

    def _find(self, images: list[np.ndarray], upsample: bool):
        found = []
        for image in images:
            rects, scores, _ = self._hog().run(image, int(upsample), self.threshold)
            found.append([(np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64), score, None)
                          for r, score in zip(rects, scores)])
        return found

    def _landmarks_for(self, frame: np.ndarray, box: np.ndarray, five: np.ndarray | None) -> np.ndarray:
        return self._landmarks(frame, box)
