"""Net3D backends: head pose, jaw, expression, shape and landmarks of faces, all behind `Face3DBackend`.

    backend = build_face3d("landmark-fit")                        # offline, for real photographs
    backend = build_face3d("synth-regressor")                     # CNN learned on the synthetic world (ships here)
    backend = build_face3d("deca", weights_dir="weights")         # the paper's DECA E_flame (user weights)
    estimate = backend.estimate(images, landmarks)                # uint8 [B, H, W, 3], optional [B, 68, 2]

Every backend returns the same `Face3DEstimate`; `estimate.to_array()` is what the store keeps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import MissingWeightsError
from models.face3d.base import Face3DBackend, Face3DEstimate, code_layout

FACE3D_BACKENDS = ("deca", "landmark-fit", "synth-regressor")

DECA_FILE = Path("deca") / "deca_model.tar"
FLAME_FILES = (Path("deca") / "generic_model.npz", Path("deca") / "generic_model.pkl")
FLAME_EMBEDDING_FILE = Path("deca") / "landmark_embedding.npy"
DECA_WHERE = ("deca_model.tar from github.com/yfeng95/DECA (README, 'Prepare data'), also inside the 'DECA model' "
              "data.tar.gz of github.com/StelaBou/stylegan_directions_face_reenactment; `reenact weights list` shows "
              "every file and its source")


def build_face3d(name: str, weights_dir: str | Path | None = None, device: str | torch.device | None = None,
                 **options) -> Face3DBackend:
    """A Net3D backend by name (one of `FACE3D_BACKENDS`).

    deca: `encoder=` a loaded `models.deca.ResnetEncoder` (the caller's weights registry builds it), or
    `weights_dir` holding `deca/deca_model.tar` (read weights-only, entry `E_flame`); FLAME for the landmarks from
    `flame=` or `weights_dir/deca/generic_model.npz` (or .pkl + landmark_embedding.npy) when present.
    synth-regressor: `weights=` a file, default the one shipped in models/data. landmark-fit: `settings=`.
    All take `landmarks=` (a `LandmarkSource`, e.g. to share one dlib detector).
    """
    if name == "deca":
        from models.face3d.deca_backend import DecaBackend

        encoder = options.pop("encoder", None) or _load_deca_encoder(weights_dir)
        flame = options.pop("flame", None) or _load_flame(weights_dir)
        return DecaBackend(encoder, flame=flame, device=device, **options)
    if name == "landmark-fit":
        from models.face3d.landmark_fit import LandmarkFitBackend

        return LandmarkFitBackend(**options)
    if name == "synth-regressor":
        from models.face3d.regressor import SynthRegressorBackend

        return SynthRegressorBackend(device=device, **options)
    raise ValueError(f"unknown face3d backend {name!r}; choose one of {', '.join(FACE3D_BACKENDS)}")


def _load_deca_encoder(weights_dir: str | Path | None):
    from models.deca import CHECKPOINT_KEY, ResnetEncoder

    path = Path(weights_dir) / DECA_FILE if weights_dir is not None else None
    if path is None or not path.is_file():
        raise MissingWeightsError(
            f"the deca backend needs DECA's weights at {path or Path('<weights_dir>') / DECA_FILE} "
            f"(or a loaded encoder): {DECA_WHERE}")
    encoder = ResnetEncoder()
    encoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)[CHECKPOINT_KEY], strict=True)
    return encoder


def _load_flame(weights_dir: str | Path | None):
    """FLAME from the weights directory when its files are there; None otherwise (landmarks pass through)."""
    if weights_dir is None:
        return None
    from models.flame import FLAME

    for candidate in FLAME_FILES:
        path = Path(weights_dir) / candidate
        embedding = Path(weights_dir) / FLAME_EMBEDDING_FILE
        if path.is_file() and (path.suffix == ".npz" or embedding.is_file()):
            return FLAME.from_files(path, embedding if path.suffix == ".pkl" else None)
    return None


__all__ = ["FACE3D_BACKENDS", "Face3DBackend", "Face3DEstimate", "MissingWeightsError", "build_face3d", "code_layout"]
