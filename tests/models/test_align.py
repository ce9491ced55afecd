import cv2
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image
from skimage.data import astronaut

from models.detect.align import (
    crop_box,
    crop_face,
    crop_faces,
    face_mask,
    landmarks_to_crop,
    landmarks_to_frame,
    paste_face,
    select_faces,
    smooth_boxes,
)
from models.detect.base import Face


def _landmarks(x0, y0, x1, y1, seed=0):
    """68 points whose bounding box is exactly (x0, y0)-(x1, y1)."""
    points = np.random.default_rng(seed).uniform([x0, y0], [x1, y1], (68, 2))
    points[0], points[1] = (x0, y0), (x1, y1)
    return points


def official_crop(image, box, size=256):
    """The authors' crop of a whole-pixel box, step by step as their ffhq_cropping.py does it (the test's oracle):
    reflect-pad the whole frame, blur the padding and fade it to the padded frame's median, slice, PIL bicubic."""
    x0, y0, x1, y1 = box
    height, width = image.shape[:2]
    left, top, right, bottom = max(-x0, 0), max(-y0, 0), max(x1 - width, 0), max(y1 - height, 0)
    if left or top or right or bottom:
        padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REFLECT).astype(np.float32)
        h, w = padded.shape[:2]
        y, x = np.ogrid[:h, :w]
        pad_l, pad_t, pad_r, pad_b = (max(p, 1e-10) for p in (left, top, right, bottom))
        mask = np.maximum(1 - np.minimum(x / pad_l, (w - 1 - x) / pad_r), 1 - np.minimum(y / pad_t, (h - 1 - y) / pad_b))
        mask = mask[..., None].astype(np.float32)
        padded += (scipy.ndimage.gaussian_filter(padded, [5, 5, 0]) - padded) * np.clip(mask * 3 + 1, 0, 1)
        padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0, 1)
        image, x0, x1, y0, y1 = padded, x0 + left, x1 + left, y0 + top, y1 + top
    cut = image[y0:y1, x0:x1].astype(np.uint8)
    return np.asarray(Image.fromarray(cut).resize((size, size), Image.BICUBIC))


def test_crop_box_by_hand():
    # landmarks span x 100..200, y 150..230: larger extent 100, centre (150, 190) moved up by 100/6 = 16.67,
    # side 2 * 100 = 200 (the official code, rounding, gives 50, 74, 250, 274)
    cy = 190 - 100 / 6
    assert np.allclose(crop_box(_landmarks(100, 150, 200, 230)), [50, cy - 100, 250, cy + 100])
    # a tall face: the larger extent is the height, 90; centre (30, 45 - 15)
    assert np.allclose(crop_box(_landmarks(0, 0, 60, 90)), [30 - 90, 30 - 90, 30 + 90, 30 + 90])
    # a batch of faces at once
    batch = np.stack([_landmarks(100, 150, 200, 230), _landmarks(0, 0, 60, 90)])
    assert np.allclose(crop_box(batch), [crop_box(batch[0]), crop_box(batch[1])])


def test_crop_equals_the_official_crop_inside_the_frame():
    frame = astronaut()
    box = crop_box(_landmarks(150, 100, 270, 220))  # extent 120: centre (210, 160 - 20), a whole-pixel box
    assert np.array_equal(box, [90, 20, 330, 260])
    assert np.array_equal(crop_faces(frame[None], box[None])[0], official_crop(frame, (90, 20, 330, 260)))


@pytest.mark.parametrize("box", [(-150, -100, 250, 300), (300, 350, 700, 750), (50, -40, 350, 260),
                                 (-300, -300, 800, 800)])
def test_crop_matches_the_official_padding_where_the_box_leaves_the_frame(box):
    frame = astronaut()
    ours = crop_faces(frame[None], np.array([box], float))[0].astype(int)
    theirs = official_crop(frame, box).astype(int)
    # only the median colour differs: the official takes it after blurring the padding, we before
    assert np.abs(ours - theirs).max() <= 6 and np.abs(ours - theirs).mean() < 1.5


def test_padding_mirrors_the_frame_and_fades_to_its_median():
    frame = np.full((1, 100, 100, 3), 220, np.uint8)
    frame[0, :, :20] = 40  # a dark band along the left edge
    crop = crop_faces(frame, np.array([[-50.0, 0.0, 50.0, 100.0]]), size=100)[0].astype(int)  # scale 1: no resampling
    # in the frame, beyond the blur's reach into it (a third of the padding's 50 px), the frame itself (but for the
    # top and bottom rows, which the official mask blurs too: an unpadded side still reaches its own edge row)
    assert np.array_equal(crop[1:-1, 67:], frame[0, 1:-1, 17:50])
    # just outside the edge the dark band is mirrored; the outermost column is the padded frame's median colour
    assert (crop[:, 40:50] < 100).all() and (crop[:, 0] == 220).all()
    # a uniform frame pads with its own colour, never with black
    uniform = np.full((1, 100, 100, 3), 200, np.uint8)
    assert (crop_faces(uniform, np.array([[-50.0, -30.0, 50.0, 70.0]]), size=64) == 200).all()


def test_fractional_boxes_resample_between_pixels():
    frame = astronaut()[None]
    whole = crop_faces(frame, np.array([[100.0, 100.0, 300.0, 300.0]]))[0].astype(int)
    shifted = crop_faces(frame, np.array([[100.5, 100.0, 300.5, 300.0]]))[0].astype(int)
    next_pixel = crop_faces(frame, np.array([[101.0, 100.0, 301.0, 300.0]]))[0].astype(int)
    # half a frame pixel is 0.64 crop pixels: the shifted crop lies between its whole-pixel neighbours
    assert np.abs(shifted - (whole + next_pixel) / 2).mean() < 0.5 * np.abs(whole - next_pixel).mean()


def test_bad_boxes_are_refused_and_empty_batches_allowed():
    with pytest.raises(ValueError, match="not a crop box"):
        crop_faces(np.zeros((1, 10, 10, 3), np.uint8), np.array([[5.0, 5.0, 5.0, 9.0]]))
    assert crop_faces(np.zeros((0, 10, 10, 3), np.uint8), np.zeros((0, 4))).shape == (0, 256, 256, 3)


def test_landmarks_map_into_crop_coordinates():
    # a 200 px box to 256 px: scale 1.28; the box's corner (frame -0.5 from pixel 50's centre) is crop -0.5
    boxes = np.array([[50.0, 20.0, 250.0, 220.0]])
    points = np.array([[[49.5, 19.5], [149.5, 119.5], [249.5, 219.5]]])  # box edges are at pixel edges
    assert np.allclose(landmarks_to_crop(points, boxes, 256), [[[-0.5, -0.5], [127.5, 127.5], [255.5, 255.5]]])


@pytest.mark.parametrize("box", [[101.0, 63.0, 281.0, 243.0], [100.3, 62.6, 480.3, 442.6]])
def test_landmarks_follow_the_pixels_they_mark(box):
    frame = np.zeros((1, 500, 500, 3), np.uint8)
    frame[0, 138:143, 168:173] = 255  # a bright 5 px square centred on x=170, y=140
    crop = crop_faces(frame, np.array([box]), 256)[0].astype(float)[..., 0]
    expected = landmarks_to_crop(np.array([[[170.0, 140.0]]]), np.array([box]), 256)[0, 0]
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
    # no lag: the step is half done between frames 29 and 30, and complete within 5 sigma on either side
    assert np.allclose((followed[29] + followed[30]) / 2, step[29] + 25)
    assert np.allclose(followed[:20], step[:20]) and np.allclose(followed[40:], step[40:])
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


def test_select_faces_follows_a_moving_face_and_ignores_a_brief_larger_one():
    walking = [_face(10 * t, 50, 120) for t in range(10)]  # moves 10 px a frame: IoU ~0.85 frame to frame
    passer_by = _face(400, 0, 200)  # larger, but in 2 frames of 10
    frames = [[face] + ([passer_by] if t in (4, 5) else []) for t, face in enumerate(walking)]
    chosen, counts = select_faces(frames)
    assert all(c is w for c, w in zip(chosen, walking)) and counts.tolist() == [1, 1, 1, 1, 2, 2, 1, 1, 1, 1]


def test_select_faces_on_no_detections():
    chosen, counts = select_faces([[], []])
    assert chosen == [None, None] and counts.tolist() == [0, 0]


# --- paste-back --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def astronaut_face():
    from models.detect import build_detector

    photo = astronaut()
    (face,) = build_detector("dlib", threads=1).detect(photo[None])[0]
    return photo, face.landmarks, crop_box(face.landmarks)


def test_face_mask_covers_the_face_softly_and_nothing_outside_its_outline(astronaut_face):
    photo, landmarks, _ = astronaut_face
    mask = face_mask(landmarks, photo.shape[:2])
    nose, chin = landmarks[30].round().astype(int), landmarks[8]
    assert mask[nose[1], nose[0]] == 1 and mask.max() == 1 and mask.min() == 0
    hair = (int(landmarks[27, 0]), int(landmarks[19, 1] - 0.8 * (chin[1] - landmarks[19, 1])))  # well above the brows
    assert mask[hair[1], hair[0]] == 0 and mask[int(chin[1]) + 8, int(chin[0])] == 0  # not the hair, not the neck
    soft = (mask > 0) & (mask < 1)
    assert 0.05 < soft.sum() / (mask > 0).sum() < 0.6  # a feathered band along the outline, not a hard edge


def test_paste_back_changes_only_pixels_inside_the_mask_and_matches_colour_at_the_seam(astronaut_face):
    photo, landmarks, box = astronaut_face
    crop = crop_face(photo, box, 256)
    brighter = np.clip(crop.astype(int) + 40, 0, 255).astype(np.uint8)  # a generated face lit differently
    pasted = paste_face(photo, brighter, box, landmarks)
    mask = face_mask(landmarks, photo.shape[:2])
    outside = mask == 0
    assert np.array_equal(pasted[outside], photo[outside])  # the driver's own pixels, unchanged
    assert (pasted[mask == 1] != photo[mask == 1]).any()
    # the seam: the crop's colour is matched to the frame's there, so the +40 does not show as a step
    seam = (mask > 0) & (mask < 0.5)
    assert np.abs(pasted[seam].astype(int) - photo[seam]).mean() < 6
    # inside, the face is the crop's (its detail), shifted by the seam's colour difference: about the frame again
    inner = mask == 1
    assert np.abs(pasted[inner].astype(int) - photo[inner]).mean() < 8
    # a flat crop comes out as a flat face in the seam's own colour
    flat = paste_face(photo, np.full_like(crop, 255), box, landmarks)
    assert flat[inner].std(axis=0).max() < 1 and np.array_equal(flat[outside], photo[outside])
    assert np.abs(flat[inner].mean(axis=0) - photo[(mask > 0) & (mask < 1)].mean(axis=0)).max() < 4


def test_paste_back_where_the_box_leaves_the_frame(astronaut_face):
    photo, landmarks, box = astronaut_face
    shift = np.array([box[2] - 40, 0])  # the face moved so that most of its box hangs off the frame's left edge
    frame = photo[:, int(shift[0]):].copy()
    moved, moved_box = landmarks - shift, box - np.r_[shift, shift]
    pasted = paste_face(frame, np.zeros((256, 256, 3), np.uint8), moved_box, moved)
    mask = face_mask(moved, frame.shape[:2])
    assert np.array_equal(pasted[mask == 0], frame[mask == 0]) and (pasted[mask == 1] < frame[mask == 1]).all()


def test_landmarks_go_back_to_frame_pixels():
    boxes = np.array([[10.0, 20.0, 110.0, 120.0], [-30.5, 4.0, 170.5, 205.0]])
    points = np.random.default_rng(0).uniform(0, 200, (2, 68, 2))
    np.testing.assert_allclose(landmarks_to_frame(landmarks_to_crop(points, boxes), boxes), points, atol=1e-9)
