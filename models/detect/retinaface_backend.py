"""RetinaFace (ResNet-50) from the `retinaface-pytorch` package, with weights the user supplies, run in batches.

The package downloads its weights at run time; here they must already be on disk, at
`<weights_dir>/retinaface/retinaface_resnet50_2020-07-20.pth`: the one file inside the package's release zip, a plain
state dict of the package's `RetinaFace` network (`build_network`). The weights registry reads it
(`retinaface-resnet50`) and hands the loaded network to `RetinaFaceDetector`. Nothing is ever downloaded.

The package's own `Model.predict_jsons` takes one image at a time; the network itself takes a batch, so this module
runs it on a whole batch of frames and decodes each with the package's priors and box decoding (same anchors,
variances, ImageNet normalisation, softmax score, NMS). One difference: frames are downscaled to `max_side` (or
resampled to a finer level, `models.detect.base.ScaledDetector`), where the package also upscales small ones.

RetinaFace gives five points; the 68 landmarks come from dlib's predictor, started from a box placed by those five
points (so RetinaFace's taller box does not mislead it) and refined once.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import torch
from torchvision.ops import nms

from models.detect.base import ScaledDetector
from models.detect.landmarks import LandmarkPredictor, hog_box_from_five_points

# The package's decoding constants (retinaface/predict_single.py)
ANCHOR_SIZES = [[16, 32], [64, 128], [256, 512]]
STRIDES = [8, 16, 32]
VARIANCES = (0.1, 0.2)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_network() -> torch.nn.Module:
    """The package's RetinaFace-ResNet50 network with random weights (built without downloading anything)."""
    try:
        from retinaface.network import RetinaFace
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the retinaface detector needs the retinaface-pytorch package: "
                                  "pip install --no-deps retinaface-pytorch") from None
    with warnings.catch_warnings():  # the package still passes torchvision the deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        return RetinaFace(name="Resnet50", pretrained=False, return_layers={"layer2": 1, "layer3": 2, "layer4": 3},
                          in_channels=256, out_channels=256)


class RetinaFaceDetector(ScaledDetector):
    """RetinaFace boxes at the detection scale, batched; 68 dlib landmarks on the full-resolution frames."""

    name = "retinaface"

    def __init__(self, network: torch.nn.Module, max_side: int = 640, device: str | None = None,
                 confidence: float = 0.7, nms_iou: float = 0.4, batch_size: int = 8):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.max_side = max_side
        self.confidence = confidence  # the package's defaults: 0.7 and 0.4
        self.nms_iou = nms_iou
        self.batch_size = batch_size  # frames per forward pass: bounds the activations' memory
        self._landmarks = LandmarkPredictor()

    @torch.no_grad()
    def _find(self, images: list[np.ndarray], upsample: bool):
        found = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.stack(images[start : start + self.batch_size])).to(self.device)
            found += [list(zip(boxes, scores, points)) for boxes, scores, points in self._decode(batch)]
        return found

    def _decode(self, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Boxes [N, 4], scores [N] and five points [N, 5, 2] per image, in the pixels of `images` [B, h, w, 3].

        The decoded coordinates are fractions of the image's edges; pixel coordinates here have pixel centres at
        integers, hence the half-pixel shift.
        """
        height, width = images.shape[1:3]
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        inputs = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
        offsets, logits, point_offsets = self.network(inputs)
        priors = anchors(height, width).to(self.device)
        pixels = torch.tensor([width, height], device=self.device, dtype=torch.float32)
        scores = logits.softmax(dim=-1)[..., 1]
        found = []
        for offset, score, point_offset in zip(offsets, scores, point_offsets):
            keep = score > self.confidence
            boxes = decode_boxes(offset[keep], priors[keep]) * pixels.repeat(2) - 0.5
            points = decode_points(point_offset[keep], priors[keep]) * pixels - 0.5
            kept = nms(boxes, score[keep], self.nms_iou)
            found.append((boxes[kept].cpu().numpy(), score[keep][kept].cpu().numpy(), points[kept].cpu().numpy()))
        return found

    def _landmarks_for(self, frame: np.ndarray, box: np.ndarray, five: np.ndarray | None) -> np.ndarray:
        return self._landmarks.predict_refined(frame, hog_box_from_five_points(five))


@lru_cache(maxsize=8)
def anchors(height: int, width: int) -> torch.Tensor:
    """The package's prior boxes (cx, cy, w, h, relative to the image) for one input size; built once per size."""
    from retinaface.prior_box import priorbox

    return priorbox(min_sizes=ANCHOR_SIZES, steps=STRIDES, clip=False, image_size=(height, width))


def decode_boxes(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Regressed offsets [N, 4] -> boxes x0, y0, x1, y1 relative to the image (the package's `decode`)."""
    from retinaface.box_utils import decode

    return decode(offsets, priors, VARIANCES)


def decode_points(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Regressed offsets [N, 10] -> five points [N, 5, 2] relative to the image (the package's `decode_landm`)."""
    from retinaface.box_utils import decode_landm

    return decode_landm(offsets, priors, VARIANCES).view(-1, 5, 2)
