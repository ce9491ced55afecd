"""CSIM as the paper measures it: ArcFace IR-SE-50 on the fixed face window of the 256 crop (`arcface_input`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.arcface import EMBEDDING_DIM, FRAME_SIZE, Backbone, arcface_input
from models.images import to_signed


class ArcFaceEmbedder:
    """`IdentityEmbedder` of a loaded `models.arcface.Backbone` (the user's `model_ir_se50.pth`)."""

    name = "arcface"
    dim = EMBEDDING_DIM

    def __init__(self, backbone: Backbone, device: str | torch.device | None = None, batch_size: int = 32):
        self.device = torch.device(device or "cpu")
        self.backbone = backbone.to(self.device).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB [B, 256, 256, 3] crops -> [B, 512] unit rows (other sizes are resized to 256 first)."""
        images = np.asarray(images, np.uint8)
        out = []
        for start in range(0, len(images), self.batch_size):
            frames = to_signed(images[start:start + self.batch_size], self.device)
            if frames.shape[-2:] != (FRAME_SIZE, FRAME_SIZE):
                frames = F.interpolate(frames, (FRAME_SIZE, FRAME_SIZE), mode="bilinear", antialias=True)
            out.append(self.backbone(arcface_input(frames)).float().cpu())
        return F.normalize(torch.cat(out), dim=1) if out else torch.empty(0, self.dim)
