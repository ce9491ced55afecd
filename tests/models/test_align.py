import numpy as np

from models.detect.align import crop_box, crop_faces, landmarks_to_crop, select_faces, smooth_boxes
from models.detect.base import Face


def _landmarks(x0, y0, x1, y1):
    """68 points whose bounding box is exactly (x0, y0)-(x1, y1)."""
    points = np.random.default_rng(0).uniform([x0, y0], [x1, y1], (68, 2))
    points[0], points[1] = (x0, y0), (x1, y1)
    return points


def test_crop_box_by_hand():
    # landmarks span x 100..200, y 150..230: larger extent 100, centre (150, 190) moved up by 100/6,
    # side 2 * 100 = 200
    box = crop_box(_landmarks(100, 150, 200, 230))
    cy = 190 - 100 / 6
    assert np.allclose(box, [50, cy - 100, 250, cy + 100])
    # a tall face: the larger extent is the height
    assert np.allclose(crop_box(_landmarks(0, 0, 60, 90)), [30 - 90, 45 - 15 - 90, 30 + 90, 45 - 15 + 90])


def test_crop_pads_with_black_where_the_box_leaves_the_frame():
    frame = np.full((1, 100, 100, 3), 200, np.uint8)
    crop = crop_faces(frame, np.array([[-50.0, 0.0, 50.0, 100.0]]), size=64)[0]
    assert crop[:, :28].max() == 0  # left half (minus the bicubic border) is padding
    assert crop[:, 36:].min() == 200  # right half is the frame
    # a box exactly on the frame is the frame resized (bicubic touches the padding only in the outermost pixel)
    same = crop_faces(frame, np.array([[0.0, 0.0, 100.0, 100.0]]), size=64)[0]
    assert (same[1:-1, 1:-1] == 200).all()


def test_landmarks_map_into_crop_coordinates():
    # a 200 px box to 256 px: scale 1.28; the box's corner (frame -0.5 from pixel 50's centre) is crop -0.5
    boxes = np.array([[50.0, 20.0, 250.0, 220.0]])
    points = np.array([[[49.5, 19.5], [149.5, 119.5], [249.5, 219.5]]])  # box edges are at pixel edges
    assert np.allclose(landmarks_to_crop(points, boxes, 256), [[[-0.5, -0.5], [127.5, 127.5], [255.5, 255.5]]])


def test_landmarks_follow_the_pixels_they_mark():
    frame = np.zeros((1, 300, 300, 3), np.uint8)
    frame[0, 140, 170] = 255  # one bright pixel at x=170, y=140
    box = np.array([[101.0, 63.0, 281.0, 243.0]])
    crop = crop_faces(frame, box, 256)[0].astype(float)[..., 0]
    expected = landmarks_to_crop(np.array([[[170.0, 140.0]]]), box, 256)[0, 0]
    ys, xs = np.mgrid[:256, :256]
    centroid = np.array([(xs * crop).sum(), (ys * crop).sum()]) / crop.sum()
    assert np.allclose(centroid, expected, atol=0.15)


def test_smoothing_removes_jitter_and_follows_a_step():
    rng = np.random.default_rng(1)
    still = np.tile([100.0, 100.0, 300.0, 300.0], (200, 1)) + rng.normal(0, 2, (200, 4))
    smoothed = smooth_boxes(still, sigma=2.0)
    assert np.diff(smoothed, axis=0).std() < 0.3 * np.diff(still, axis=0).std()
    step = np.tile([100.0, 100.0, 300.0, 300.0], (60, 1))
    step[30:] += 50
    followed = smooth_boxes(step, sigma=2.0)
    assert np.allclose(followed[:20], step[:20]) and np.allclose(followed[40:], step[40:])  # lag bounded by 5 sigma
    assert np.array_equal(smooth_boxes(still, 0), still)


def _face(x0, y0, side):
    box = np.array([x0, y0, x0 + side, y0 + side], np.float32)
    return Face(box=box, score=1.0, landmarks=np.zeros((68, 2), np.float32))


def test_select_faces_keeps_the_big_face_even_where_only_the_small_one_is_seen():
    big, small = _face(0, 0, 100), _face(300, 0, 40)
    frames = [[big, small], [small, big], [small], [big], []]
    chosen, counts = select_faces(frames)
    assert chosen[0] is big and chosen[1] is big and chosen[3] is big
    assert chosen[2] is None and chosen[4] is None  # the small face never takes over the crop
    assert counts.tolist() == [2, 2, 1, 1, 0]


def test_select_faces_on_no_detections():
    chosen, counts = select_faces([[], []])
    assert chosen == [None, None] and counts.tolist() == [0, 0]
