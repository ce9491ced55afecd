"""The two image layouts the pipeline meets: uint8 RGB pixels [B, H, W, 3] (files, the store) and float tensors
[B, 3, H, W] in [-1, 1] (what G makes and the encoders read)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FRAME_SIZE = 256  # the aligned crop every stage works in: the store's crops, the official G's output


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """float [B, 3, H, W] resized to size x size (bilinear, antialiased when shrinking); as they are when already so."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, (size, size), mode="bilinear", antialias=True, align_corners=False)


def to_signed(pixels: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1], on `device` (the conversion runs there)."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.tensor(pixels)  # a copy: arrays read from Zarr are read-only, which torch warns about
    return pixels.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] about [-1, 1] -> uint8 [B, H, W, 3], clipped and rounded as image writers expect."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).contiguous().cpu().numpy()
