"""ArcFace IR-SE-50: the identity network of the identity loss and of CSIM.

The reference code uses TreB1eN's InsightFace_Pytorch model (`model_ir_se50.pth`, a bare state dict read with
`Backbone.load_state_dict(torch.load(path))`): an IR-SE-50 body on a 112x112 face and a 512-d embedding with
unit L2 norm. Our `Backbone` has the same module names, so that file loads with `strict=True`.

Its input is not an aligned face: the identity loss of pSp, e4e and the reenactment paper crops a fixed window of
the 256x256 generator frame (rows 35:223, columns 32:220, i.e. 188x188 around the face of a centred crop) and
average-pools it to 112x112 (`arcface_input`). Pixel values stay in the generator's [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.irse import input_layer, ir_body

EMBEDDING_DIM = 512
# The fixed face window of a 256x256 frame used by the official identity loss (rows, columns).
FACE_ROWS = slice(35, 223)
FACE_COLS = slice(32, 220)
FRAME_SIZE = 256


class Backbone(nn.Module):
    """IR(-SE) network from a face image to an L2-normalised 512-d embedding.

    Keyword order differs from the original positional order (input_size, num_layers, mode, drop_ratio, affine);
    pass keywords. The defaults are those of the identity loss: IR-SE-50, dropout 0.6 (inactive in eval).
    """

    def __init__(
        self,
        input_size: int = 112,
        num_layers: int = 50,
        mode: str = "ir_se",
        drop_ratio: float = 0.6,
        affine: bool = True,
    ):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"input_size must be 112 or 224, got {input_size}")
        final_size = input_size // 16  # four stride-2 stages
        # registration order follows the original, so the state dict lists entries in the same order
        self.input_layer = input_layer()
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * final_size * final_size, EMBEDDING_DIM),
            nn.BatchNorm1d(EMBEDDING_DIM, affine=affine),
        )
        self.body = ir_body(num_layers, mode)

    def embed_unnormalised(self, faces: torch.Tensor) -> torch.Tensor:
        """The output layer before L2 normalisation, [B, 512]."""
        return self.output_layer(self.body(self.input_layer(faces)))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings [B, 512] of faces [B, 3, S, S] in [-1, 1] (S = input_size)."""
        embedding = self.embed_unnormalised(faces)
        return embedding / embedding.norm(dim=1, keepdim=True)


def arcface_input(frames: torch.Tensor) -> torch.Tensor:
    """The official identity-loss input: the fixed face window of 256x256 frames, pooled to 112x112.

    frames: [B, 3, 256, 256] in [-1, 1] (a generator output or a face crop of the same framing).
    """
    if frames.shape[-2:] != (FRAME_SIZE, FRAME_SIZE):
        raise ValueError(f"arcface_input expects {FRAME_SIZE}x{FRAME_SIZE} frames, got {tuple(frames.shape[-2:])}")
    return F.adaptive_avg_pool2d(frames[..., FACE_ROWS, FACE_COLS], (112, 112))
