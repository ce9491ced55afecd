"""A small CNN that reads pose, jaw, expressions and head shape from a face crop, learned on the synthetic world.

Trained by `training/face3d_regressor.py` on renders of `models.synth` (where the truth is known), it answers in the
synthetic head's units: yaw, pitch, roll in degrees (DECA's reading), jaw in radians of opening, the 11
`models.synth.head.EXPRESSION_NAMES` coefficients (not DECA's), and the 6 `SHAPE_NAMES` coefficients as `shape`.

Input: a square around the face's 68 landmarks (centred on their box, side 1.4 times their larger extent: tighter
than the paper's 2x crop, so the face fills the small input), sampled at 192x192 and average-pooled to 96x96, RGB
scaled to [-1, 1]. It is cut from whatever image comes in (a store crop, a render, a whole photograph), so all reach
the network framed alike.

The weights ship in the repository (`models/data/face3d_synth_regressor.safetensors`, fp16, about 1.5 MB); the
weights registry reads them (`face3d-synth-regressor`) and hands the built network to `SynthRegressorBackend`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.directions import NUM_PARAMS, FaceParams
from models.face3d.base import Face3DEstimate
from models.face3d.landmark_source import LandmarkSource, fill_missing

CROP_SIZE = 192  # the crop is sampled at twice the input size, then pooled: less aliasing from large photographs
INPUT_SIZE = 96
SHAPE_SIZE = 6  # models.synth.head.SHAPE_NAMES
CROP_PER_EXTENT = 1.4  # crop side per larger landmark extent


def crop_boxes(landmarks: np.ndarray) -> np.ndarray:
    """The network's crop square [B, 4] (x0, y0, x1, y1, slice edges as `models.detect.align.crop_box`) of
    landmarks [B, 68, 2]: centred on the landmarks' box, 1.4 times their larger extent."""
    landmarks = np.asarray(landmarks, np.float32)
    low, high = landmarks.min(axis=-2), landmarks.max(axis=-2)
    half = CROP_PER_EXTENT * (high - low).max(axis=-1, keepdims=True) / 2
    centre = (low + high) / 2
    return np.concatenate([centre - half, centre + half], axis=-1).astype(np.float32)


def regressor_input(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Network input [B, 3, 96, 96] in [-1, 1] from images uint8/float [B, 3, H, W] in [0, 255] and boxes [B, 4].

    Crop pixel j of a box covers [x0 + j / s, x0 + (j + 1) / s) (`models.detect.align.crop_transform`); its centre
    is sampled bilinearly (reflected outside the image), then 2x2 blocks are averaged.
    """
    height, width = images.shape[-2:]
    steps = (torch.arange(CROP_SIZE, dtype=torch.float32, device=images.device) + 0.5) / CROP_SIZE
    low, side = boxes[:, :2], boxes[:, 2:] - boxes[:, :2]
    centres = low[:, None, :] + steps[None, :, None] * side[:, None, :] - 0.5  # [B, S, 2] pixel-centre coordinates
    normalised = (2 * centres + 1) / centres.new_tensor([width, height]) - 1  # grid_sample, align_corners=False
    grid = torch.stack(torch.broadcast_tensors(normalised[:, None, :, 0], normalised[:, :, None, 1]), dim=-1)
    crops = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return F.avg_pool2d(crops, CROP_SIZE // INPUT_SIZE) / 127.5 - 1


def _stage(inputs: int, outputs: int) -> nn.Sequential:
    """Halve the resolution, then one more 3x3 convolution."""
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True),
    )


class Face3DRegressor(nn.Module):
    """[B, 3, 96, 96] crops -> [B, 15 + 6]: the 15 parameters in `PARAM_NAMES` order, then the head's shape.

    A stride-2 stem and four stride-2 stages down to 3x3 (kept, not pooled away: where the features lie tells the
    pose), one hidden layer. Outputs are de-normalised by `target_scale` and `target_offset` (buffers, so the file
    is self-contained).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96, 128), hidden: int = 256,
                 outputs: int = NUM_PARAMS + SHAPE_SIZE):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                             nn.ReLU(inplace=True))
        self.features = nn.Sequential(stem, *(_stage(a, b) for a, b in zip(widths[:-1], widths[1:])))
        final = INPUT_SIZE // 2 ** len(widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * final * final, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, outputs))
        self.register_buffer("target_scale", torch.ones(outputs))
        self.register_buffer("target_offset", torch.zeros(outputs))
        self.config = {"widths": list(widths), "hidden": hidden, "outputs": outputs}

    def normalised(self, inputs: torch.Tensor) -> torch.Tensor:
        """The raw outputs, targets mapped to about [-1, 1] (what training compares)."""
        return self.head(self.features(inputs))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.normalised(inputs) * self.target_scale + self.target_offset


class SynthRegressorBackend:
    """`Face3DBackend` of the regressor. Landmarks (given, or dlib's) place the crop and are passed through."""

    name = "synth-regressor"
    shape_size = SHAPE_SIZE

    def __init__(self, network: Face3DRegressor, device: str | torch.device | None = None,
                 landmarks: LandmarkSource | None = None):
        self.device = torch.device(device or "cpu")
        self.network = network.to(self.device).eval()
        self.landmarks = landmarks or LandmarkSource()

    @torch.no_grad()
    def estimate(self, images: np.ndarray, landmarks: np.ndarray | None = None) -> Face3DEstimate:
        images = np.asarray(images, np.uint8)
        points, found = self.landmarks.resolve(images, landmarks)
        boxes = crop_boxes(fill_missing(points, found, *images.shape[1:3]))
        pixels = torch.tensor(images).to(self.device).permute(0, 3, 1, 2)
        values = self.network(regressor_input(pixels, torch.from_numpy(boxes).to(self.device))).float().cpu()
        return Face3DEstimate(
            params=FaceParams.from_vector(values[:, :NUM_PARAMS]),
            shape=values[:, NUM_PARAMS:NUM_PARAMS + SHAPE_SIZE],
            landmarks=torch.from_numpy(points),
            found=torch.from_numpy(found),
        )
