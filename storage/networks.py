"""Networks put together from weights-registry files: the metric networks, the detectors and the Net3D backends.

`models/` never opens a weights file: these functions read every file through one `WeightsRegistry` (weights-only
pickles, the safetensors cache, the allow-list of builders, "missing file, where to put it" errors) and hand the
state dicts or built modules to the `models/` factories.

    registry = WeightsRegistry(weights_dir)
    lpips(registry, device)                              # LPIPS: the lpips wheel's heads + torchvision's AlexNet
    fid_inception(registry, device)                      # pytorch-fid's Inception
    identity_embedder(registry, "arcface", device)       # or "dlib" (no file)
    face3d_backend(registry, "deca", device)             # or "synth-regressor", "landmark-fit"
    face_detector(registry, "retinaface", max_side=640)  # or "dlib"
    flame(registry)                                      # FLAME's model, for DECA's landmarks
"""

from __future__ import annotations

from typing import Any

import torch

from models import MissingWeightsError
from storage.weights import WeightsRegistry

LPIPS_TRUNK, LPIPS_HEADS, FID_INCEPTION = "lpips-alexnet", "lpips-heads", "fid-inception"  # WEIGHT_FILES names
ARCFACE, DECA, REGRESSOR, RETINAFACE = "arcface-ir-se50", "deca", "face3d-synth-regressor", "retinaface-resnet50"
REGRESSOR_BUILDER = "models.face3d.regressor:Face3DRegressor"


def lpips(registry: WeightsRegistry, device: str | torch.device | None = None, random_backbone: bool = False):
    """LPIPS (AlexNet, v0.1). `random_backbone=True` reads only the heads (tests and timing: not LPIPS)."""
    from models.metrics.lpips import build_lpips

    heads = registry.load_state(LPIPS_HEADS).state
    backbone = None if random_backbone else registry.load_state(LPIPS_TRUNK).state
    return build_lpips(heads, backbone, random_backbone=random_backbone, device=device)


def fid_inception(registry: WeightsRegistry, device: str | torch.device | None = None, random_weights: bool = False):
    """The FID Inception. `random_weights=True` reads nothing (tests and timing: not FID's features)."""
    from models.metrics.inception import build_fid_inception

    state = None if random_weights else registry.load_state(FID_INCEPTION).state
    return build_fid_inception(state, random_weights=random_weights, device=device)


def identity_embedder(registry: WeightsRegistry, name: str, device: str | torch.device | None = None, **options):
    """An identity embedder by name (`models.identity.IDENTITY_BACKENDS`); arcface's backbone from the registry."""
    from models.identity import build_identity

    if name == "arcface":
        options["backbone"] = registry.get(ARCFACE, device or "cpu")
        return build_identity(name, device=device, **options)
    return build_identity(name, **options)


def flame(registry: WeightsRegistry, required: bool = True):
    """FLAME from the weights directory: the converted .npz, or the official .pkl with DECA's landmark embedding.
    `required=False`: None when FLAME's file is absent (DECA then passes the input landmarks through)."""
    from models.flame import FLAME

    try:
        path = registry.path("flame")
        embedding = registry.path("flame-landmark-embedding") if path.suffix == ".pkl" else None
    except MissingWeightsError:
        if required:
            raise
        return None
    return FLAME.from_files(path, embedding)


def face3d_backend(registry: WeightsRegistry, name: str, device: str | torch.device | None = None,
                   regressor: str | None = None, **options):
    """A Net3D backend by name (`models.face3d.FACE3D_BACKENDS`) with its networks from the registry, unless
    `options` hold them: deca's E_flame (and FLAME when present), synth-regressor's CNN (`regressor`: another
    registry name or exported .safetensors file; default the bundled one)."""
    from models.face3d import build_face3d

    if name == "deca":  # what the caller does not pass already
        if "encoder" not in options:
            options["encoder"] = registry.get(DECA)
        if "flame" not in options:
            options["flame"] = flame(registry, required=False)
    elif name == "synth-regressor" and "network" not in options:
        options["network"] = registry.load_spec(regressor or REGRESSOR, expect=REGRESSOR_BUILDER)[0]
    return build_face3d(name, device=device, **options)


def face_detector(registry: WeightsRegistry, name: str, max_side: int = 640, **options: Any):
    """A face detector by name (`models.detect.DETECTORS`); RetinaFace's network from the registry."""
    from models.detect import build_detector

    if name == "retinaface":
        options["network"] = registry.get(RETINAFACE)
    return build_detector(name, max_side=max_side, **options)
