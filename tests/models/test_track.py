"""Following a face through a video on synthetic clips whose true landmarks are known: it stays on the face, it
re-detects at a hard cut (never drifting onto the background), and it finds small faces at a finer scale."""

import numpy as np
import pytest

from models.detect import align, build_detector
from models.detect.track import FaceTracker
from tests.synthetic_clips import Scene, synthetic_clip

# mean landmark error in pixels of the official 256 px crop (of the true landmarks): dlib's own error on these
# renders is ~4 (README, Synthetic world); following between key frames adds about 1
TOLERANCE = 6.0


@pytest.fixture(scope="module")
def detector():
    return build_detector("dlib", threads=1)


def crop_error(landmarks: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance of two sets of landmarks in pixels of the 256 px crop of the true ones."""
    box = align.crop_box(truth)[None]
    return float(np.linalg.norm(align.landmarks_to_crop(landmarks[None], box)[0]
                                - align.landmarks_to_crop(truth[None], box)[0], axis=1).mean())


def follow(detector, frames, every=8):
    tracker = FaceTracker(detector, detect_every=every)
    return tracker, [tracker(frame) for frame in frames]


def test_a_moving_face_is_followed_between_key_frames_within_tolerance(detector):
    frames, truth = synthetic_clip([(Scene(2, 7, 110, (0.35, 0.5), (0.3, 0.05)), 40)], (360, 640))
    tracker, followed = follow(detector, frames)
    assert all(f.landmarks is not None for f in followed)
    errors = [crop_error(f.landmarks, t) for f, t in zip(followed, truth)]
    assert np.mean(errors) < TOLERANCE and np.max(errors) < 2 * TOLERANCE
    # the detector ran on the first frame and then every 8 frames (in a region around the face), not on all 40
    assert tracker.detections["start"] == 1 and sum(tracker.detections.values()) <= 1 + 40 // 8 + 2
    assert sum(f.reason is None for f in followed) >= 30 and tracker.scale == 1.0


def test_a_hard_cut_triggers_detection_and_the_box_never_drifts_onto_the_background(detector):
    left = Scene(2, 7, 110, (0.3, 0.5))
    right = Scene(5, 9, 100, (0.72, 0.45))  # another person, elsewhere, on another background
    empty = Scene(8, 1, 100, (0.5, 0.5), has_face=False)  # a shot without anyone
    frames, truth = synthetic_clip([(left, 12), (right, 12), (empty, 6), (left, 6)], (360, 640))
    _, followed = follow(detector, frames, every=25)  # no scheduled key frame: only the cuts re-detect
    reasons = [f.reason for f in followed]
    assert reasons[12] == reasons[24] == "cut"  # into the second person's shot, into the empty one
    assert reasons[25:31] == ["lost"] * 6 and reasons.count(None) == 36 - 9  # then searched until a face is back
    for index, (face, true) in enumerate(zip(followed, truth)):
        if np.isnan(true).any():
            assert face.landmarks is None, f"frame {index}: landmarks on an empty shot"
        else:
            assert face.landmarks is not None, f"frame {index}: the face was lost"
            assert crop_error(face.landmarks, true) < 2 * TOLERANCE, f"frame {index}: off the face"


def test_a_small_face_in_a_wide_frame_is_found_at_a_finer_scale_and_followed(detector):
    frames, truth = synthetic_clip([(Scene(3, 5, 50, (0.3, 0.4), (0.1, 0.05)), 10)], (720, 1280))
    tracker, followed = follow(detector, frames, every=4)
    assert tracker.scale == 2.0  # not at the working scale (0.5): the frame searched at twice its size
    errors = [crop_error(f.landmarks, t) for f, t in zip(followed, truth)]
    assert np.mean(errors) < TOLERANCE
