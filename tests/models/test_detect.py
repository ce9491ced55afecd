import cv2
import numpy as np
import pytest
import torch
from skimage.data import astronaut

from models.detect import MissingWeightsError, build_detector
from models.detect.base import detection_scales, search_scales
from models.detect.landmarks import LandmarkPredictor, five_points, hog_box_from_five_points
from models.detect.retinaface_backend import build_network
from storage.checkpoints import CheckpointKeysError
from storage.networks import face_detector
from storage.weights import WEIGHT_FILES, WeightsRegistry

WEIGHTS_FILE = WEIGHT_FILES["retinaface-resnet50"].filename


@pytest.fixture(scope="module")
def dlib_detector():
    return build_detector("dlib")


def _check_landmarks(face):
    x0, y0, x1, y1 = face.box
    points = face.landmarks
    assert points.shape == (68, 2) and points.dtype == np.float32
    margin = 0.25 * (x1 - x0)  # the jaw line may run a little past dlib's box
    assert ((points >= [x0 - margin, y0 - margin]) & (points <= [x1 + margin, y1 + margin])).all()
    brows, eyes, nose_tip, mouth, chin = (points[r, 1].mean() for r in (slice(17, 27), slice(36, 48), 30,
                                                                        slice(48, 68), 8))
    assert brows < eyes < nose_tip < mouth < chin  # iBUG order, face upright
    assert points[36:42, 0].mean() < points[42:48, 0].mean()  # the eye on the image's left comes first


def test_dlib_finds_the_astronaut_with_sane_landmarks(dlib_detector):
    (faces,) = dlib_detector.detect(astronaut()[None])
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 150 < x0 < x1 < 330 and 50 < y0 < y1 < 250  # her face, not the flag or the suit
    _check_landmarks(faces[0])


def test_dlib_finds_two_faces_at_two_scales_and_none_in_a_blank_image(dlib_detector):
    head = astronaut()[20:240, 110:330]  # her face is 87 px wide in the photograph: 40% of this cut
    canvas = np.zeros((400, 640, 3), np.uint8)
    canvas[24:376, 0:352] = cv2.resize(head, (352, 352), interpolation=cv2.INTER_CUBIC)
    canvas[90:310, 400:620] = head
    two, blank = dlib_detector.detect(np.stack([canvas, np.full_like(canvas, 127)]))
    assert blank == [] and len(two) == 2
    big, small = sorted(two, key=lambda face: -face.area)
    assert big.box[2] < 352 < 400 < small.box[0]
    assert 2.0 < big.area / small.area < 3.2  # 1.6 ** 2 = 2.56
    for face in two:
        _check_landmarks(face)


def test_dlib_on_a_small_frame_searches_an_upsampled_level(dlib_detector):
    small = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    (faces,) = dlib_detector.detect(small[None])
    assert len(faces) == 1
    _check_landmarks(faces[0])


def test_dlib_on_a_4k_frame_maps_boxes_and_landmarks_to_full_resolution(dlib_detector):
    frame = np.full((2160, 3840, 3), 90, np.uint8)
    frame[80:2080, 1000:3000] = cv2.resize(astronaut(), (2000, 2000), interpolation=cv2.INTER_CUBIC)
    (faces,) = dlib_detector.detect(frame[None])
    (reference,) = dlib_detector.detect(astronaut()[None])
    assert len(faces) == 1 and len(reference) == 1
    _check_landmarks(faces[0])
    # the same face as in the 512 px photograph, scaled by 2000 / 512 and shifted: within 1.5% of the face size
    expected = (reference[0].landmarks + 0.5) * 2000 / 512 - 0.5 + [1000, 80]
    face_size = faces[0].box[2] - faces[0].box[0]
    assert np.linalg.norm(faces[0].landmarks - expected, axis=1).mean() < 0.015 * face_size


def test_dlib_finds_a_small_face_only_at_a_finer_scale_and_maps_it_back(dlib_detector):
    # the astronaut's face (87 px in the photograph) at 40 px in a 1280x720 frame: 20 px at the working scale (0.5)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[300:540, 700:940] = cv2.resize(astronaut(), (240, 240), interpolation=cv2.INTER_AREA)  # face: 41 px
    assert detection_scales(720, 1280, 640) == [0.5, 1.0, 2.0]
    assert detection_scales(1080, 1920, 640) == pytest.approx([1 / 3, 2 / 3, 4 / 3, 2.0])
    assert detection_scales(2160, 3840, 640) == pytest.approx([1 / 6, 1 / 3, 2 / 3, 1.0])  # at most 3840 px searched
    assert dlib_detector.detect(frame[None])[0] == []
    faces, scale = search_scales(dlib_detector, frame)
    assert scale == 2.0 and len(faces) == 1
    (reference,) = dlib_detector.detect(astronaut()[None])[0]
    expected = (reference.landmarks + 0.5) * 240 / 512 - 0.5 + [700, 300]
    assert np.linalg.norm(faces[0].landmarks - expected, axis=1).mean() < 0.06 * (faces[0].box[2] - faces[0].box[0])


def test_a_region_is_searched_alone_and_mapped_to_frame_pixels(dlib_detector):
    canvas = np.full((400, 900, 3), 90, np.uint8)
    canvas[50:350, 520:820] = cv2.resize(astronaut()[20:240, 110:330], (300, 300), interpolation=cv2.INTER_CUBIC)
    (whole,) = dlib_detector.detect(canvas[None])[0]
    (inside,) = dlib_detector.detect_region(canvas, np.array([450.0, 0.0, 900.0, 400.0]), 0.6)
    assert dlib_detector.detect_region(canvas, np.array([0.0, 0.0, 450.0, 400.0]), 0.6) == []
    assert np.abs(inside.box - whole.box).max() < 0.1 * (whole.box[2] - whole.box[0])  # HOG's cell grid shifts
    _check_landmarks(inside)


def test_mtcnn_finds_faces_in_a_batch_with_68_landmarks():
    detector = build_detector("mtcnn", device="cpu")
    photo = astronaut()
    faces = detector.detect(np.stack([photo, photo[:, ::-1], np.full_like(photo, 127)]))
    assert [len(found) for found in faces] == [1, 1, 0]
    (face,), (mirrored,), _ = faces
    assert 150 < face.box[0] < face.box[2] < 330 and face.score > 0.99
    _check_landmarks(face)
    (reference,) = build_detector("dlib").detect(photo[None])[0]
    size = reference.box[2] - reference.box[0]
    assert np.linalg.norm(face.landmarks - reference.landmarks, axis=1).mean() < 0.03 * size  # the same face
    assert abs((mirrored.box[0] + mirrored.box[2]) / 2 - (511 - (face.box[0] + face.box[2]) / 2)) < 4


def test_landmarks_recover_from_boxes_framed_unlike_dlibs():
    photo = astronaut()
    predictor = LandmarkPredictor()
    detector = build_detector("dlib", threads=1)
    (face,) = detector.detect(photo[None])[0]
    size = face.box[2] - face.box[0]

    def error(landmarks):
        return np.linalg.norm(landmarks - face.landmarks, axis=1).mean() / size

    # a RetinaFace-like box: 30% larger, reaching up into the forehead
    centre = (face.box[:2] + face.box[2:]) / 2 - [0, 0.15 * size]
    loose = np.r_[centre - 0.65 * size, centre + 0.65 * size]
    assert error(predictor.predict_refined(photo, loose)) < 0.01
    # started from five points only (what RetinaFace gives)
    from_five = hog_box_from_five_points(five_points(face.landmarks))
    assert error(predictor.predict_refined(photo, from_five)) < 0.01


def test_unknown_detector_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown face detector 'nope'; choose one of dlib, retinaface, mtcnn"):
        build_detector("nope")


def test_retinaface_says_where_its_weights_go(tmp_path):
    expected = str(tmp_path / "retinaface" / "retinaface_resnet50_2020-07-20.pth")
    with pytest.raises(MissingWeightsError, match=expected) as error:
        face_detector(WeightsRegistry(tmp_path), "retinaface")
    assert "never downloads" in str(error.value) and "releases/download" in str(error.value)
    with pytest.raises(TypeError, match="loaded network"):
        build_detector("retinaface")  # models/ reads no file: the registry's factory does


@pytest.fixture(scope="module")
def random_retinaface(tmp_path_factory):
    """A RetinaFace detector loaded from a randomly initialised state dict saved at the documented path."""
    weights_dir = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = build_network().state_dict()
    (weights_dir / WEIGHTS_FILE).parent.mkdir(parents=True)
    torch.save(state, weights_dir / WEIGHTS_FILE)
    return face_detector(WeightsRegistry(weights_dir), "retinaface", device="cpu"), state


def test_retinaface_loads_user_weights_from_the_documented_path(random_retinaface):
    detector, state = random_retinaface
    loaded = detector.network.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], value) for name, value in state.items())


def test_retinaface_refuses_a_file_that_is_not_its_state_dict(tmp_path):
    (tmp_path / WEIGHTS_FILE).parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(CheckpointKeysError, match="does not fit models.detect.retinaface_backend:build_network"):
        face_detector(WeightsRegistry(tmp_path), "retinaface")


def test_retinaface_batched_decoding_equals_the_packages_own(random_retinaface):
    from retinaface.predict_single import Model

    detector, state = random_retinaface
    package = Model(max_size=160, device="cpu")  # small frames: a ResNet-50 pass on 320 px takes 4 s on 2 cores
    package.load_state_dict(state)
    package.eval()
    frames = np.stack([cv2.resize(astronaut(), (160, 160), interpolation=cv2.INTER_AREA),
                       np.full((160, 160, 3), 127, np.uint8)])  # already at max_size: neither side resizes
    detector.max_side, detector.confidence = 160, 0.9  # random weights score high: a few boxes survive NMS
    found = detector._decode(torch.from_numpy(frames))
    assert len(found[0][0]) > 0
    for frame, (boxes, scores, points) in zip(frames, found):
        theirs = package.predict_jsons(frame, confidence_threshold=0.9, nms_threshold=detector.nms_iou)
        theirs = [item for item in theirs if item["bbox"]]  # the package's placeholder for "no face"
        assert len(theirs) == len(boxes)
        # the same boxes, scores and points, in the same (NMS) order; theirs in pixel-edge coordinates, rounded
        assert np.allclose(np.reshape([item["bbox"] for item in theirs], (-1, 4)), boxes + 0.5, atol=0.006)
        assert np.allclose([item["score"] for item in theirs], scores, atol=0.006)
        assert np.allclose(np.reshape([item["landmarks"] for item in theirs], (-1, 5, 2)), points + 0.5, atol=0.006)


def test_retinaface_detect_gives_faces_with_landmarks_per_frame(random_retinaface):
    detector, _ = random_retinaface
    detector.max_side, detector.confidence = 160, 0.999  # random weights: keep a handful of boxes
    frames = np.stack([astronaut(), astronaut()[:, ::-1]])  # detected on 160 px copies, landmarks on 512 px
    faces = detector.detect(frames)
    assert len(faces) == 2
    for frame_faces in faces:
        for face in frame_faces:
            assert face.box.shape == (4,) and face.landmarks.shape == (68, 2) and 0.999 < face.score <= 1
