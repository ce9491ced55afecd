"""Identity embedders behind CSIM and the identity loss.

    embedder = build_identity("dlib")                          # offline: dlib's ResNet, shipped in a wheel
    embedder = build_identity("arcface", weights_dir="weights")  # the paper's ArcFace IR-SE-50 (user weights)
    csim = cosine_similarity(embedder.embed(a), embedder.embed(b))
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import MissingWeightsError
from models.identity.base import IdentityEmbedder, cosine_similarity

IDENTITY_BACKENDS = ("arcface", "dlib")
ARCFACE_FILE = Path("model_ir_se50.pth")
ARCFACE_WHERE = ("'IR-SE50 Model' (TreB1eN/InsightFace_Pytorch), linked from the README of "
                 "github.com/StelaBou/stylegan_directions_face_reenactment; `reenact weights list` shows its source")


def build_identity(name: str, weights_dir: str | Path | None = None, device: str | torch.device | None = None,
                   **options) -> IdentityEmbedder:
    """An embedder by name (one of `IDENTITY_BACKENDS`).

    arcface: `backbone=` a loaded `models.arcface.Backbone` (the caller's weights registry builds it), or
    `weights_dir` holding `model_ir_se50.pth` (a bare state dict, read weights-only). dlib: `num_jitters=`.
    """
    if name == "arcface":
        from models.identity.arcface_backend import ArcFaceEmbedder

        backbone = options.pop("backbone", None) or _load_arcface(weights_dir)
        return ArcFaceEmbedder(backbone, device=device, **options)
    if name == "dlib":
        from models.identity.dlib_backend import DlibFaceEmbedder

        return DlibFaceEmbedder(**options)
    raise ValueError(f"unknown identity backend {name!r}; choose one of {', '.join(IDENTITY_BACKENDS)}")


def _load_arcface(weights_dir: str | Path | None):
    from models.arcface import Backbone

    path = Path(weights_dir) / ARCFACE_FILE if weights_dir is not None else None
    if path is None or not path.is_file():
        raise MissingWeightsError(
            f"the arcface embedder needs {path or Path('<weights_dir>') / ARCFACE_FILE} (or a loaded backbone): "
            f"{ARCFACE_WHERE}")
    backbone = Backbone(input_size=112, num_layers=50, mode="ir_se", drop_ratio=0.6, affine=True)
    backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return backbone


__all__ = ["IDENTITY_BACKENDS", "IdentityEmbedder", "MissingWeightsError", "build_identity", "cosine_similarity"]
