"""Net3D backends: head pose, jaw, expression, shape and landmarks of faces, all behind `Face3DBackend`.

    backend = build_face3d("landmark-fit")                        # offline, for real photographs
    backend = build_face3d("synth-regressor", network=network)    # CNN learned on the synthetic world (ships here)
    backend = build_face3d("deca", encoder=encoder, flame=flame)  # the paper's DECA E_flame (user weights)
    estimate = backend.estimate(images, landmarks)                # uint8 [B, H, W, 3], optional [B, 68, 2]

Networks come in loaded: the weights registry reads their files (`storage.networks.face3d_backend(registry, name)`
builds any backend from a weights directory). Every backend returns the same `Face3DEstimate`;
`estimate.to_array()` is what the store keeps.
"""

from __future__ import annotations

import torch

from models import MissingWeightsError
from models.face3d.base import Face3DBackend, Face3DEstimate, code_layout

FACE3D_BACKENDS = ("deca", "landmark-fit", "synth-regressor")
NETWORK_OPTION = {"deca": "encoder", "synth-regressor": "network"}  # the loaded network each backend takes


def build_face3d(name: str, device: str | torch.device | None = None, **options) -> Face3DBackend:
    """A Net3D backend by name (one of `FACE3D_BACKENDS`).

    deca: `encoder=` a loaded `models.deca.ResnetEncoder`, `flame=` a `models.flame.FLAME` for the landmarks (None:
    they pass through). synth-regressor: `network=` a loaded `Face3DRegressor`. landmark-fit: `settings=`.
    All take `landmarks=` (a `LandmarkSource`, e.g. to share one dlib detector).
    """
    if name not in FACE3D_BACKENDS:
        raise ValueError(f"unknown face3d backend {name!r}; choose one of {', '.join(FACE3D_BACKENDS)}")
    needed = NETWORK_OPTION.get(name)
    if needed and options.get(needed) is None:
        raise TypeError(f"the {name} backend takes its loaded network as {needed}=; "
                        f"storage.networks.face3d_backend(registry, {name!r}) builds it from the weights directory")
    if name == "deca":
        from models.face3d.deca_backend import DecaBackend

        return DecaBackend(options.pop("encoder"), device=device, **options)
    if name == "landmark-fit":
        from models.face3d.landmark_fit import LandmarkFitBackend

        return LandmarkFitBackend(**options)
    from models.face3d.regressor import SynthRegressorBackend

    return SynthRegressorBackend(options.pop("network"), device=device, **options)


__all__ = ["FACE3D_BACKENDS", "Face3DBackend", "Face3DEstimate", "MissingWeightsError", "build_face3d", "code_layout"]
