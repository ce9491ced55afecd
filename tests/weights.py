"""Weights directories for tests: the official files' layouts filled with fixed random weights.

Nothing can be downloaded here, so end-to-end runs use networks of the real architectures, in the official
checkpoints' dict layouts, with seeded random weights: every loading and inference path runs for real, and a run is
reproducible, but the faces they make are noise.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from models.deca import CHECKPOINT_KEY as DECA_KEY
from models.deca import ResnetEncoder
from models.directions import DirectionMatrix, to_checkpoint
from models.e4e import Encoder4Editing
from models.stylegan2 import Generator


def write_official_weights(root: Path, seed: int = 0) -> Path:
    """`stylegan-voxceleb.pt`, `e4e-voxceleb.pt`, `A_matrix.pt` and `deca/deca_model.tar` under `root`, as the
    official release lays them out (the encoder in float16 to halve its 840 MB; loading casts it back)."""
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    generator = Generator(256, 512, 8, channel_multiplier=1)
    torch.save({"g_ema": generator.state_dict()}, root / "stylegan-voxceleb.pt")
    encoder = Encoder4Editing(50, "ir_se", 256)
    torch.save({"e": {name: value.half() for name, value in encoder.state_dict().items()}}, root / "e4e-voxceleb.pt")
    del encoder
    torch.save(to_checkpoint(DirectionMatrix()), root / "A_matrix.pt")
    write_deca_encoder(root)
    return root


def write_deca_encoder(root: Path) -> None:
    """`deca/deca_model.tar` holding E_flame's random weights (from torch's current seed) under its official key."""
    (root / "deca").mkdir(parents=True, exist_ok=True)
    torch.save({DECA_KEY: ResnetEncoder().state_dict()}, root / "deca" / "deca_model.tar")


def write_deca_flame_weights(root: Path, seed: int = 0) -> Path:
    """What DECA as a Net3D reads under `root`: `deca/deca_model.tar` (seeded random E_flame) and FLAME's official
    files, the synthetic model of tests/models/test_flame.py as `deca/generic_model.pkl` (plain arrays) and
    `deca/landmark_embedding.npy`."""
    from tests.models.test_flame import synthetic_flame  # a test module: imported only by the tests that need FLAME

    torch.manual_seed(seed)
    write_deca_encoder(root)
    model, embedding = synthetic_flame(np.random.default_rng(seed))
    (root / "deca" / "generic_model.pkl").write_bytes(pickle.dumps(model, protocol=2))
    np.save(root / "deca" / "landmark_embedding.npy", embedding, allow_pickle=True)
    return root


def write_metric_weights(root: Path) -> Path:
    """Random LPIPS-trunk (AlexNet features) and FID-Inception files under their registry names: LPIPS, FID and KID
    run their real code, on numbers that are not theirs."""
    from models.metrics.inception import FIDInception
    from models.metrics.lpips import LPIPS
    from storage.weights import WEIGHT_FILES

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    trunk = {name: value for name, value in LPIPS().state_dict().items() if name.startswith("features.")}
    torch.save(trunk, root / WEIGHT_FILES["lpips-alexnet"].filename)
    torch.save(FIDInception().state_dict(), root / WEIGHT_FILES["fid-inception"].filename)
    return root
