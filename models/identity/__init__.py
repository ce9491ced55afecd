"""Identity embedders behind CSIM and the identity loss.

    embedder = build_identity("dlib")                         # offline: dlib's ResNet, shipped in a wheel
    embedder = build_identity("arcface", backbone=backbone)   # the paper's ArcFace IR-SE-50, loaded by the caller
    csim = cosine_similarity(embedder.embed(a), embedder.embed(b))

ArcFace's weights (the user's `model_ir_se50.pth`) are read by the weights registry, never here:
`storage.networks.identity_embedder(registry, "arcface")` builds the embedder from the weights directory.
"""

from __future__ import annotations

import torch

from models import MissingWeightsError
from models.identity.base import IdentityEmbedder, cosine_similarity

IDENTITY_BACKENDS = ("arcface", "dlib")


def build_identity(name: str, device: str | torch.device | None = None, **options) -> IdentityEmbedder:
    """An embedder by name (one of `IDENTITY_BACKENDS`).

    arcface: `backbone=` a loaded `models.arcface.Backbone` (the caller's weights registry builds it),
    `batch_size=`. dlib: `num_jitters=`.
    """
    if name == "arcface":
        from models.identity.arcface_backend import ArcFaceEmbedder

        backbone = options.pop("backbone", None)
        if backbone is None:
            raise TypeError("the arcface embedder takes a loaded backbone= (models.arcface.Backbone); "
                            "storage.networks.identity_embedder(registry, 'arcface') builds it from the weights "
                            "directory")
        return ArcFaceEmbedder(backbone, device=device, **options)
    if name == "dlib":
        from models.identity.dlib_backend import DlibFaceEmbedder

        return DlibFaceEmbedder(**options)
    raise ValueError(f"unknown identity backend {name!r}; choose one of {', '.join(IDENTITY_BACKENDS)}")


__all__ = ["IDENTITY_BACKENDS", "IdentityEmbedder", "MissingWeightsError", "build_identity", "cosine_similarity"]
