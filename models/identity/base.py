"""The identity-embedding interface behind CSIM and the identity loss.

Each backend maps aligned face crops (the store's 256x256 crops, uint8 RGB [B, 256, 256, 3]) to L2-normalised
embeddings [B, D]; CSIM is the cosine (dot product) of two embeddings. The backend's `name` goes beside every CSIM
figure: numbers from different networks are not comparable.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class IdentityEmbedder(Protocol):
    name: str
    dim: int

    def embed(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB [B, 256, 256, 3] aligned crops -> float32 [B, dim], each row of unit norm."""
        ...


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two [B, D] embedding batches (CSIM per pair)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)
