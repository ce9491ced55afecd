import cv2
import numpy as np
import pytest
import torch

from models.detect import MissingWeightsError, build_detector
from models.detect.retinaface_backend import WEIGHTS_FILE, build_model
from tests.media import photo


@pytest.fixture(scope="module")
def dlib_detector():
    return build_detector("dlib")


def _check_landmarks(face):
    x0, y0, x1, y1 = face.box
    points = face.landmarks
    assert points.shape == (68, 2)
    inside = (points[:, 0] > x0 - 0.2 * (x1 - x0)) & (points[:, 0] < x1 + 0.2 * (x1 - x0))
    assert inside.all()
    eyes, mouth = points[36:48, 1].mean(), points[48:68, 1].mean()
    assert eyes < mouth  # iBUG order: eyes 36-47 above mouth 48-67


def test_dlib_finds_the_astronaut_with_sane_landmarks(dlib_detector):
    (faces,) = dlib_detector.detect(photo()[None])
    assert len(faces) == 1
    _check_landmarks(faces[0])


def test_dlib_finds_two_faces_and_none_in_a_blank_image(dlib_detector):
    face = photo()[40:240, 120:320]
    canvas = np.zeros((400, 640, 3), np.uint8)
    canvas[20:380, 0:360] = cv2.resize(face, (360, 360))
    canvas[90:310, 400:620] = cv2.resize(face, (220, 220))
    two, blank = dlib_detector.detect(np.stack([canvas, np.full_like(canvas, 127)]))
    assert len(two) == 2 and blank == []
    assert sorted(f.box[0] < 360 for f in two) == [False, True]


def test_dlib_on_a_4k_frame_maps_boxes_back_to_full_resolution(dlib_detector):
    frame = np.full((2160, 3840, 3), 90, np.uint8)
    frame[80:2080, 1000:3000] = cv2.resize(photo(), (2000, 2000))
    (faces,) = dlib_detector.detect(frame[None])
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 1000 < x0 < x1 < 3000 and 80 < y0 < y1 < 2080 and x1 - x0 > 300
    _check_landmarks(faces[0])


def test_unknown_detector_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown face detector 'nope'"):
        build_detector("nope")


def test_retinaface_says_where_its_weights_go(tmp_path):
    with pytest.raises(MissingWeightsError, match=str(tmp_path / WEIGHTS_FILE)):
        build_detector("retinaface", tmp_path)


def test_retinaface_loads_user_weights_from_the_documented_path(tmp_path):
    torch.manual_seed(0)
    state = build_model(640).model.state_dict()
    (tmp_path / WEIGHTS_FILE).parent.mkdir(parents=True)
    torch.save(state, tmp_path / WEIGHTS_FILE)
    detector = build_detector("retinaface", tmp_path)
    loaded = detector._model.model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in state.items())
    faces = detector.detect(photo()[None])  # random weights: runs end to end, finds whatever it finds
    assert isinstance(faces, list) and len(faces) == 1
