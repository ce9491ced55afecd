"""Identity embedders: unit rows, the same face gives cosine 1, the same person is closer than another (dlib, on the
bundled photographs), ArcFace's plumbing in the official layout, and the factory's errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import MissingWeightsError
from models.arcface import Backbone
from models.detect import build_detector, crop_box, crop_faces
from models.identity import IDENTITY_BACKENDS, build_identity, cosine_similarity
from models.identity.dlib_backend import aligned_crop_face_box
from storage.networks import identity_embedder
from storage.weights import WeightsRegistry
from tests.models.parity import fill_for_parity

PHOTOS = Path(__file__).parents[2] / "data" / "demo" / "photos"


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    """The bundled photographs cut to the paper's 256 crop around dlib's landmarks."""
    detector = build_detector("dlib")
    out = {}
    for name in ("obama", "obama2", "biden", "astronaut"):
        image = np.asarray(Image.open(PHOTOS / f"{name}.jpg").convert("RGB"))
        face = max(detector.detect(image[None])[0], key=lambda f: f.area)
        out[name] = crop_faces(image[None], crop_box(face.landmarks)[None])[0]
    return out


@pytest.fixture(scope="module")
def dlib_embedder():
    return build_identity("dlib")


def test_dlib_rows_are_unit_and_the_same_image_gives_one(dlib_embedder, crops):
    batch = np.stack([crops["obama"], crops["obama"], crops["biden"]])
    embedding = dlib_embedder.embed(batch)
    assert embedding.shape == (3, 128) and embedding.dtype == torch.float32 and dlib_embedder.dim == 128
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))
    assert cosine_similarity(embedding[:1], embedding[1:2]).item() == pytest.approx(1.0, abs=1e-6)


def test_dlib_same_person_is_closer_than_different_people(dlib_embedder, crops):
    names = list(crops)
    embedding = dict(zip(names, dlib_embedder.embed(np.stack([crops[n] for n in names]))))
    same = cosine_similarity(embedding["obama"][None], embedding["obama2"][None]).item()
    different = [cosine_similarity(embedding[a][None], embedding[b][None]).item()
                 for a, b in (("obama", "biden"), ("obama", "astronaut"), ("obama2", "biden"), ("biden", "astronaut"))]
    # measured: same 0.967; different 0.820-0.833
    assert same > 0.93 and max(different) < same - 0.08


def test_dlib_face_box_of_an_aligned_crop():
    # 256 crop: landmark extent 128, landmark box centred 21.3 px below the crop's centre, HOG box 12.8 px above that
    assert aligned_crop_face_box(256) == (64, 73, 192, 201)


def test_arcface_plumbing_with_official_layout(crops):
    backbone = Backbone()
    fill_for_parity(backbone, "arcface_ir_se50")  # seeded fill in the official layout: no real weights needed
    embedder = build_identity("arcface", backbone=backbone)
    batch = np.stack([crops["obama"], crops["obama"], crops["astronaut"]])
    embedding = embedder.embed(batch)
    assert embedding.shape == (3, 512) and embedder.dim == 512 and embedder.name == "arcface"
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))
    assert cosine_similarity(embedding[:1], embedding[1:2]).item() == pytest.approx(1.0, abs=1e-5)
    # another size is resized to the 256 frame first
    small = np.asarray(Image.fromarray(crops["obama"]).resize((128, 128), Image.Resampling.BILINEAR))
    assert embedder.embed(small[None]).shape == (1, 512)


def test_factory_names_and_missing_weights(tmp_path):
    assert IDENTITY_BACKENDS == ("arcface", "dlib")
    with pytest.raises(ValueError, match="arcface, dlib"):
        build_identity("facenet")
    with pytest.raises(TypeError, match="loaded backbone"):
        build_identity("arcface")  # models/ reads no file: the registry's factory does
    with pytest.raises(MissingWeightsError, match=f"{tmp_path / 'model_ir_se50.pth'}.*Put it at that path"):
        identity_embedder(WeightsRegistry(tmp_path), "arcface")
