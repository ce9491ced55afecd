"""The paper's Net3D: DECA's coarse encoder E_flame read the way the reference code reads it, but batched.

Per face: DECA's landmark crop (`models.deca.deca_input`) -> E_flame -> the 236-d code; yaw, pitch, roll from the
global pose (`models.flame.euler_from_axis_angle`), jaw = pose[3] (the x component of the jaw's axis-angle, its
opening), exp = the first 11 FLAME expression coefficients, shape = the 100 FLAME identity coefficients.

Landmarks: with FLAME's assets, FLAME's 68 points (DECA's `landmarks2d`: dynamic contour) projected with the code's
orthographic camera and mapped from the crop back to image pixels; without them, the input landmarks.

The reference runs DECA one image at a time; here one forward pass takes the whole batch (in chunks of
`batch_size` to bound memory).
"""

from __future__ import annotations

import numpy as np
import torch

from models.deca import CODE_SIZE, DecaCode, ResnetEncoder, deca_crop_box, deca_input
from models.directions import NUM_EXPRESSIONS, FaceParams
from models.face3d.base import Face3DEstimate
from models.face3d.landmark_source import LandmarkSource, fill_missing
from models.flame import FLAME, euler_from_axis_angle, orthographic_projection


class DecaBackend:
    """`Face3DBackend` of E_flame (+ FLAME for the landmarks, when given)."""

    name = "deca"
    shape_size = 100

    def __init__(self, encoder: ResnetEncoder, flame: FLAME | None = None, device: str | torch.device | None = None,
                 landmarks: LandmarkSource | None = None, batch_size: int = 32):
        self.device = torch.device(device or "cpu")
        self.encoder = encoder.to(self.device).eval()
        self.flame = flame.to(self.device).eval() if flame is not None else None
        self.landmarks = landmarks or LandmarkSource()
        self.batch_size = batch_size

    @torch.no_grad()
    def estimate(self, images: np.ndarray, landmarks: np.ndarray | None = None) -> Face3DEstimate:
        images = np.asarray(images, np.uint8)
        points, found = self.landmarks.resolve(images, landmarks)
        crop_points = torch.from_numpy(fill_missing(points, found, *images.shape[1:3]))
        codes = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            pixels = torch.tensor(images[chunk]).to(self.device).permute(0, 3, 1, 2).float()
            codes.append(self.encoder(deca_input(pixels, crop_points[chunk].to(self.device))).float().cpu())
        code = DecaCode.from_vector(torch.cat(codes) if codes else torch.zeros(0, CODE_SIZE))
        with_flame = self.flame is not None and len(images) > 0  # FLAME's skinning cannot take an empty batch
        return Face3DEstimate(
            params=face_params(code),
            shape=code.shape,
            landmarks=self._landmarks(code, crop_points) if with_flame else torch.from_numpy(points),
            found=torch.from_numpy(found),
        )

    def _landmarks(self, code: DecaCode, crop_points: torch.Tensor) -> torch.Tensor:
        """FLAME's 68 points in image pixels: the camera's [-1, 1] spans DECA's crop square (corner pixel centres,
        as `deca_input` samples it), so x = centre + n * side / 2."""
        flame_out = self.flame(code.shape.to(self.device), code.exp.to(self.device), code.pose.to(self.device))
        normalised = orthographic_projection(flame_out.landmarks, code.cam.to(self.device)).cpu()
        return crop_to_image(normalised, crop_points)


def face_params(code: DecaCode) -> FaceParams:
    """The 15 parameters of A from DECA codes (differentiable): yaw, pitch, roll of the global pose, jaw = pose[3],
    the first 11 expression coefficients."""
    yaw, pitch, roll = euler_from_axis_angle(code.global_pose).unbind(-1)
    return FaceParams(yaw, pitch, roll, code.jaw_pose[:, 0], code.exp[:, :NUM_EXPRESSIONS])


def crop_to_image(normalised: torch.Tensor, crop_points: torch.Tensor) -> torch.Tensor:
    """Points [B, N, 2] of DECA's normalised crop frame (the orthographic camera's [-1, 1]) in image pixels, for
    the crop `deca_input` cut around crop_points [B, K, 2]: x = centre + n * side / 2."""
    centre, side = deca_crop_box(crop_points)
    return centre[:, None, :] + normalised * side[:, None, None] / 2
