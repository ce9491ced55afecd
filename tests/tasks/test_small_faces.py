"""Small faces in wide frames: a synthetic clip whose face is 40-60 px tall in a 1280x720 frame preprocesses `ok`,
its manifest row says the finer scale it was found at, and its landmarks lie within tolerance of the truth."""

import numpy as np

from models.detect import align
from storage.inputs import ClipSource
from storage.store import ClipKey, ClipStore
from tasks.preprocess import PreprocessConfig, preprocess_clip
from tests.media import write_clip
from tests.synthetic_clips import Scene, synthetic_clip

TOLERANCE = 6.0  # mean landmark error in pixels of the 256 px crop; dlib's own on full-size renders is ~4


def test_a_small_face_in_a_720p_frame_preprocesses_ok_at_a_finer_scale(tmp_path):
    frames, truth = synthetic_clip([(Scene(3, 5, 46, (0.62, 0.45), (-0.08, 0.04)), 10)], (720, 1280))
    heights = truth[..., 1].max(axis=1) - truth[..., 1].min(axis=1)
    assert 40 <= heights.min() and heights.max() <= 60
    path = write_clip(tmp_path / "in" / "id0" / "wide" / "00001.mp4", frames, crf=16)
    store = ClipStore.open(tmp_path / "store.zarr")
    key = ClipKey("id0", "wide", "00001")
    row = preprocess_clip(ClipSource(key, path), store, PreprocessConfig())
    assert row["status"] == "ok", row["error"]
    assert row["face_scale"] == 2.0 and row["frames_without_face"] == 0  # the frame searched at twice its size
    clip = store.clip(key)
    boxes, landmarks = clip.boxes[:], clip.landmarks[:]
    expected = align.landmarks_to_crop(truth, boxes)
    errors = np.linalg.norm(landmarks - expected, axis=2).mean(axis=1)
    assert errors.mean() < TOLERANCE and errors.max() < 2 * TOLERANCE
