"""Offline default detector: dlib's HOG frontal-face detector (no weight file) + the packaged 68-point predictor."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from models.detect.base import Face
from models.detect.landmarks import LandmarkPredictor

MIN_DETECT_SIDE = 400  # below this, upsample once: HOG misses faces smaller than ~80 px
THRESHOLD = 0.3  # HOG margin: faces here score 1 to 2, the false positives seen (clothing, hands) below 0.1


class DlibDetector:
    name = "dlib"

    def __init__(self, max_side: int = 640, threshold: float = THRESHOLD, threads: int | None = None):
        import dlib

        self.max_side = max_side
        self.threshold = threshold
        # dlib releases the GIL while it detects, so frames of a batch run in parallel threads
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dlib") if self.threads > 1 else None
        self._dlib = dlib
        self._local = threading.local()
        self._landmarks = LandmarkPredictor()  # read-only at prediction time: one instance serves every thread

    def _hog(self):
        """This thread's HOG detector: dlib's object detector keeps scan state, so threads must not share one."""
        if not hasattr(self._local, "hog"):
            self._local.hog = self._dlib.get_frontal_face_detector()
        return self._local.hog

    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        frames = [np.ascontiguousarray(frame) for frame in frames]
        if self._pool is None or len(frames) == 1:
            return [self._detect_one(frame) for frame in frames]
        return list(self._pool.map(self._detect_one, frames))

    def _detect_one(self, frame: np.ndarray) -> list[Face]:
        scale = min(1.0, self.max_side / max(frame.shape[:2]))
        small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else frame
        upsample = 1 if max(small.shape[:2]) < MIN_DETECT_SIDE else 0
        rects, scores, _ = self._hog().run(small, upsample, self.threshold)
        faces = []
        for rect, score in zip(rects, scores):
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32) / scale
            faces.append(Face(box=box, score=float(score), landmarks=self._landmarks(frame, box)))
        return faces
