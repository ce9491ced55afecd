"""The offline identity embedder: dlib's 128-d face recognition ResNet, whose weights ship in face-recognition-models.

dlib aligns each face itself from five points (its 5-point shape predictor) into a 150x150 chip. On the store's
aligned crops the face sits in a known place, so the predictor starts from the box dlib's HOG detector would give
there, derived from the crop's geometry (`models.detect.align`: the landmark box is the crop's middle half, shifted
down by a sixth of its side; `models.detect.landmarks`: where HOG boxes sit on such a face). No detection runs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.detect.align import CROP_PER_EXTENT, SHIFT_UP
from models.detect.landmarks import HOG_RAISE_PER_EXTENT, HOG_SIDE_PER_EXTENT, packaged_model

DIM = 128


def aligned_crop_face_box(size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the HOG-style face box in a size x size crop of the paper's preprocessing."""
    extent = size / CROP_PER_EXTENT
    centre_x = size / 2
    centre_y = size / 2 + SHIFT_UP * extent - HOG_RAISE_PER_EXTENT * extent
    half = HOG_SIDE_PER_EXTENT * extent / 2
    return (round(centre_x - half), round(centre_y - half), round(centre_x + half), round(centre_y + half))


class DlibFaceEmbedder:
    """`IdentityEmbedder` of dlib_face_recognition_resnet_model_v1 with the 5-point alignment."""

    name = "dlib"
    dim = DIM

    def __init__(self, num_jitters: int = 0):
        import dlib

        self._dlib = dlib
        self._points = dlib.shape_predictor(str(packaged_model("shape_predictor_5_face_landmarks.dat")))
        self._network = dlib.face_recognition_model_v1(str(packaged_model("dlib_face_recognition_resnet_model_v1.dat")))
        self.num_jitters = num_jitters  # dlib's test-time augmentation (0: one pass)

    def embed(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB [B, S, S, 3] aligned crops -> [B, 128] unit rows."""
        if len(images) == 0:
            return torch.empty(0, DIM)
        frames = [np.ascontiguousarray(image, dtype=np.uint8) for image in images]
        shapes = [self._points(frame, self._dlib.rectangle(*aligned_crop_face_box(frame.shape[0])))
                  for frame in frames]
        vectors = torch.tensor(np.array([self._network.compute_face_descriptor(frame, shape, self.num_jitters)
                                         for frame, shape in zip(frames, shapes)]), dtype=torch.float32)
        return F.normalize(vectors, dim=1)
