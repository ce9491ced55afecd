"""The synthetic world's camera and where its head sits: constants shared by the renderer, the landmark fit and
train-directions' landmark term (numpy only, so a machine without OpenCV can import them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    focal: float  # pixels
    distance: float  # metres from the camera to the origin of camera space
    size: int  # square image side in pixels

    @property
    def centre(self) -> float:
        return (self.size - 1) / 2


# Chosen so that the official crop (models.detect.align.crop_box) of a frontal face's true landmarks covers about
# the whole frame, centred: preprocessing's crops are then close to the renders themselves.
CAMERA = Camera(focal=850.0, distance=1.0, size=256)
HEAD_POSITION = np.array([0.0, 0.019, 0.0])  # the head's origin in camera space, metres
