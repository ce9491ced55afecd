"""Face detection, 68-point landmarks and the crop geometry of the paper's preprocessing."""

from models.detect.base import DETECTORS, Face, FaceDetector, MissingWeightsError, build_detector

__all__ = ["DETECTORS", "Face", "FaceDetector", "MissingWeightsError", "build_detector"]
