"""DECA's coarse encoder E_flame: a face crop to the 236 FLAME, camera and light coefficients.

`ResnetEncoder(outsize=236)` has the module names of DECA's `decalib/models/encoders.py`: `encoder` is a ResNet-50
without its classifier (2048 features after global average pooling), `layers` the regressor
Linear(2048, 1024) - ReLU - Linear(1024, 236). `deca_model.tar` is a torch checkpoint whose `E_flame` entry is this
network's state dict (it also holds `E_detail` and `D_detail`, which the reenactment pipeline does not use).

Input, as the reference code prepares it (`decalib/datasets/datasets.py`, `TestData.get_image_tensor`):
68 landmarks of the face (FAN there) give a box (min/max of the points); its side is the mean of width and height
times 1.1, then times 1.25, rounded down to whole pixels, centred on the box centre. That square is warped to
224x224 and divided by 255: RGB in [0, 1], no mean/std normalisation. `deca_input` does exactly this crop.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

CHECKPOINT_KEY = "E_flame"
INPUT_SIZE = 224
FEATURE_SIZE = 2048
# DECA's param_list with n_shape=100, n_tex=50, n_exp=50, n_pose=6, n_cam=3, n_light=27
CODE_LAYOUT = (("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27))
CODE_SIZE = sum(size for _, size in CODE_LAYOUT)


def resnet50_features() -> ResNet:
    """ResNet-50 (stride on the 3x3 convolution, as torchvision) from an image to its pooled 2048 features.

    DECA's copy pools with AvgPool2d(7), which on a 224x224 input is the same global average torchvision takes.
    """
    trunk = ResNet(Bottleneck, [3, 4, 6, 3])
    trunk.fc = nn.Identity()  # DECA's ResNet has no classifier, so no `fc` entries in its state dict
    return trunk


class ResnetEncoder(nn.Module):
    """E_flame: images [B, 3, 224, 224] in [0, 1] to codes [B, outsize] (no output activation)."""

    def __init__(self, outsize: int = CODE_SIZE):
        super().__init__()
        self.encoder = resnet50_features()
        self.layers = nn.Sequential(nn.Linear(FEATURE_SIZE, 1024), nn.ReLU(), nn.Linear(1024, outsize))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.encoder(images))


@dataclass
class DecaCode:
    """The 236-d code split as DECA's `decompose_code` does."""

    shape: torch.Tensor  # [B, 100] FLAME identity
    tex: torch.Tensor  # [B, 50] albedo (unused by the reenactment pipeline)
    exp: torch.Tensor  # [B, 50] FLAME expression
    pose: torch.Tensor  # [B, 6] global head rotation (axis-angle 3) | jaw rotation (axis-angle 3)
    cam: torch.Tensor  # [B, 3] orthographic camera: scale, tx, ty
    light: torch.Tensor  # [B, 9, 3] spherical-harmonics lighting

    @classmethod
    def from_vector(cls, code: torch.Tensor) -> DecaCode:
        """Split codes [B, 236] into their named parts (views, no copy)."""
        if code.shape[-1] != CODE_SIZE:
            raise ValueError(f"a DECA code has {CODE_SIZE} values, got {code.shape[-1]}")
        parts = dict(zip([name for name, _ in CODE_LAYOUT], code.split([size for _, size in CODE_LAYOUT], -1)))
        parts["light"] = parts["light"].unflatten(-1, (9, 3))
        return cls(**parts)

    def to_vector(self) -> torch.Tensor:
        """The codes [B, 236] again."""
        return torch.cat([getattr(self, f.name).flatten(1) for f in fields(self)], dim=-1)

    @property
    def global_pose(self) -> torch.Tensor:
        return self.pose[:, :3]

    @property
    def jaw_pose(self) -> torch.Tensor:
        return self.pose[:, 3:]


def deca_crop_box(landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre [B, 2] (x, y) and whole-pixel side [B] of DECA's square crop around 68 landmarks [B, 68, 2]."""
    low, high = landmarks.amin(dim=1), landmarks.amax(dim=1)
    centre = (low + high) / 2
    side = torch.floor((high - low).mean(dim=1) * 1.1 * 1.25)
    return centre, side


def deca_input(images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """DECA's input: the landmark-centred square of images [B, 3, H, W] in [0, 255], as [B, 3, 224, 224] in [0, 1].

    The reference maps the square's corners (x0, y0) and (x0 + side, y0 + side) onto output pixels 0 and 223 and
    samples bilinearly with zeros outside the image; the same map is used here.
    """
    centre, side = deca_crop_box(landmarks)
    height, width = images.shape[-2:]
    # output pixel u samples source x = x0 + u * side / 223; grid_sample wants x in [-1, 1] over pixel centres
    steps = torch.arange(INPUT_SIZE, dtype=images.dtype, device=images.device) / (INPUT_SIZE - 1)
    source = (centre - side[:, None] / 2)[:, None, :] + steps[None, :, None] * side[:, None, None]  # [B, 224, 2]
    normalised = 2 * source / source.new_tensor([width - 1, height - 1]) - 1
    grid = torch.stack(torch.broadcast_tensors(normalised[:, None, :, 0], normalised[:, :, None, 1]), dim=-1)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return crops / 255
