"""The preprocess-dataset flow end to end on real files: every kind of bad input, resume, idempotence."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from flows.preprocess_dataset import preprocess_dataset
from storage.manifest import read_manifest
from storage.store import ClipKey, ClipStore
from storage.video import ffmpeg_exe
from tasks.preprocess import PreprocessConfig
from tests.media import audio_only, face_frames, photo, truncated, variable_frame_rate, write_clip, zero_frames


def _two_faces(count: int) -> np.ndarray:
    """A big face on the left and a smaller one on the right, in every frame."""
    face = photo()[40:240, 120:320]
    canvas = np.zeros((count, 400, 640, 3), np.uint8)
    canvas[:, 20:380, 0:360] = cv2.resize(face, (360, 360), interpolation=cv2.INTER_AREA)
    canvas[:, 90:310, 400:620] = cv2.resize(face, (220, 220), interpolation=cv2.INTER_AREA)
    return canvas


def _four_k(count: int) -> np.ndarray:
    """A 3840x2160 frame with a face about 430 px wide."""
    frames = np.full((count, 2160, 3840, 3), 90, np.uint8)
    frames[:, 80:2080, 1000:3000] = face_frames(count, size=2000)
    return frames


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox")
    clip = lambda name: (root / name).with_suffix(".mp4")  # noqa: E731
    for name in ("good/v/00001", "trunc/v/00001", "zero/v/00001", "text/v/00001", "audio/v/00001",
                 "noface/v/00001", "two/v/00001", "gray/v/00001", "big/v/00001", "vfr/v/00001",
                 "escape/v/00001", "dir/v/00001"):
        clip(name).parent.mkdir(parents=True)
    good = write_clip(clip("good/v/00001"), face_frames(20), audio=True)
    truncated(clip("trunc/v/00001"), good, keep=0.4)
    zero_frames(clip("zero/v/00001"))
    clip("text/v/00001").write_text("this is not a video")
    audio_only(clip("audio/v/00001"))
    rng = np.random.default_rng(0)
    write_clip(clip("noface/v/00001"), rng.integers(0, 255, (12, 128, 128, 3), dtype=np.uint8))
    write_clip(clip("two/v/00001"), _two_faces(10))
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(good), "-c:v", "ffv1", "-pix_fmt", "gray",
                    str(root / "gray/v/00001.mkv")], check=True)
    write_clip(clip("big/v/00001"), _four_k(6), crf=30)
    variable_frame_rate(clip("vfr/v/00001"), face_frames(16), [40, 40, 80, 20])
    outside = write_clip(tmp_path_factory.mktemp("outside") / "x.mp4", face_frames(5))
    clip("escape/v/00001").symlink_to(outside)
    clip("dir/v/00001").mkdir()  # a directory with a video's name: unreadable as a file
    return root


@pytest.fixture(scope="module")
def first_run(bad_inputs, tmp_path_factory):
    store = tmp_path_factory.mktemp("out") / "d.zarr"
    summary = preprocess_dataset(input=str(bad_inputs), store=str(store), config=PreprocessConfig(fps=25, batch_size=8))
    return summary, ClipStore.open(store), read_manifest(store / "manifest.parquet").set_index("identity")


def test_every_bad_input_gets_a_clear_error_and_the_batch_goes_on(first_run):
    summary, _, manifest = first_run
    assert summary.clips == 12 and summary.failed == 7 and summary.ok == 5
    expected = {
        "trunc": "cannot decode", "zero": "no video stream", "text": "not a media file", "audio": "audio-only",
        "noface": "no face detected in any of 12 frames", "escape": "outside the input root", "dir": "not a readable file",
    }
    for identity, message in expected.items():
        row = manifest.loc[identity]
        assert row["status"] == "failed" and message in row["error"], (identity, row["error"])
    for identity in ("good", "two", "gray", "big", "vfr"):
        assert manifest.loc[identity, "status"] == "ok", manifest.loc[identity, "error"]


def test_crops_landmarks_and_boxes_are_stored(first_run):
    _, store, manifest = first_run
    clip = store.clip(ClipKey("good", "v", "00001"))
    assert clip.crops.shape == (20, 256, 256, 3) and clip.crops.dtype == np.uint8
    assert clip.landmarks.shape == (20, 68, 2) and clip.boxes.shape == (20, 4)
    attrs = clip.attrs
    assert attrs["fps"] == 25 and attrs["frames"] == 20 and len(attrs["source_sha256"]) == 64
    assert attrs["config_hash"] == PreprocessConfig(fps=25).config_hash() and attrs["code_version"]
    landmarks = clip.landmarks[:]
    # the official crop: the landmark box spans half the crop's side, centred, shifted up by a sixth of its size
    extent = landmarks.max(axis=1) - landmarks.min(axis=1)
    larger = extent.max(axis=1)
    assert abs(np.median(larger) - 128) < 3 and np.allclose(larger, 128, atol=13)  # the box is smoothed, landmarks jitter
    assert bool(manifest.loc["good", "has_audio"])


def test_several_faces_pick_the_largest_consistently(first_run):
    _, store, manifest = first_run
    clip = store.clip(ClipKey("two", "v", "00001"))
    assert manifest.loc["two", "faces_max"] == 2 and (clip["faces"][:] == 2).all()
    boxes = clip.boxes[:]
    assert (boxes[:, 2] < 400).all()  # every crop stays on the big face on the left


def test_grayscale_large_and_variable_frame_rate_videos(first_run):
    _, store, manifest = first_run
    gray = store.clip(ClipKey("gray", "v", "00001")).frames(0, 4)
    assert np.array_equal(gray[..., 0], gray[..., 1])
    big = store.clip(ClipKey("big", "v", "00001"))
    assert big.crops.shape[1:] == (256, 256, 3) and manifest.loc["big", "width"] == 3840
    box = big.boxes[0]
    assert 1500 < box[0] < 1800 and 2000 < box[2] < 2300  # found in the full-resolution frame
    assert len(store.clip(ClipKey("vfr", "v", "00001"))) == 18  # last frame starts at 0.70 s: ticks 0..0.68 s at 25 fps


def test_rerun_skips_done_clips_and_retries_failed_ones(first_run, bad_inputs):
    summary, store, _ = first_run
    again = preprocess_dataset(input=str(bad_inputs), store=str(store.root), config=PreprocessConfig(fps=25, batch_size=8))
    assert (again.skipped, again.failed, again.ok) == (5, 7, 0)
    manifest = read_manifest(store.manifest_path)
    assert len(manifest) == 12 and not manifest.duplicated(["identity", "video", "clip"]).any()
    listing = bad_inputs / "only_good.csv"
    listing.write_text("path\ngood/v/00001.mp4\n")
    changed_config = PreprocessConfig(fps=25, box_smoothing=0.0)
    changed = preprocess_dataset(input=str(listing), store=str(store.root), config=changed_config)
    assert (changed.clips, changed.ok) == (1, 1)  # a new config hash means the clip is computed again
    assert store.attrs(ClipKey("good", "v", "00001"))["config_hash"] == changed_config.config_hash()
