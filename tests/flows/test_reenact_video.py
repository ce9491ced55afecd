"""The reenact-video flow end to end on real video files, with the official networks' layouts (fixed random weights):
the output file, the step's arithmetic on a decoded frame, reuse of the store, layouts, and every bad input."""

from __future__ import annotations

import subprocess
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from flows.encode_dataset import encode_dataset
from flows.preprocess_dataset import preprocess_dataset
from flows.reenact_video import reenact_video
from storage.store import ClipStore
from storage.video import VideoReader, probe
from storage.weights import UnknownWeightsError
from tasks.encode import EncodeConfig
from tasks.reenact import (
    ReenactConfig,
    ReenactInputError,
    networks_for,
    prepare_driving,
    prepare_inputs,
    prepare_source,
    reenact,
)
from tests.flows.conftest import BIN, ROOT
from tests.media import DEMO_VIDEOS, PHOTOS, write_clip

FRAMES = 15
DEMO_CLIP = DEMO_VIDEOS / "id00001" / "astronaut01" / "00001.mp4"


def decode(path) -> np.ndarray:
    reader = VideoReader(path)
    return np.concatenate(list(reader.batches(64)))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Short driving videos cut from a bundled demo clip (25 fps, with audio): one whole, one whose face is gone
    for frames 4-7, one with no face at all; in VoxCeleb layout so preprocessing can take them."""
    root = tmp_path_factory.mktemp("driving")
    frames = decode(DEMO_CLIP)[:FRAMES]
    (root / "vox" / "id01" / "talk").mkdir(parents=True)
    whole = write_clip(root / "vox" / "id01" / "talk" / "00001.mp4", frames, audio=True)
    gap = frames.copy()
    gap[4:8] = 128
    with_gap = write_clip(root / "gap.mp4", gap, audio=True)
    faceless = write_clip(root / "faceless.mp4", np.full_like(frames, 90), audio=False)
    return {"whole": whole, "gap": with_gap, "faceless": faceless, "root": root}


@pytest.fixture(scope="module")
def config(official_weights) -> ReenactConfig:
    return ReenactConfig(weights_dir=str(official_weights))


def test_cross_reenactment_is_a_playable_mp4_at_the_drivers_rate_with_its_audio(clips, config, tmp_path):
    output = tmp_path / "out" / "cross.mp4"
    summary = reenact_video(driving=str(clips["whole"]), source=str(PHOTOS / "obama.jpg"), output=str(output),
                            config=config.model_copy(update={"batch_size": 4}))  # batches of 4, the last of 3
    info, driving = probe(output), probe(clips["whole"])
    assert (info.frames, info.fps, info.has_audio) == (driving.frames, driving.fps, True) == (FRAMES, 25.0, True)
    assert (info.width, info.height, info.codec) == (256, 256, "h264")
    assert (summary.frames, summary.weights, summary.face3d, summary.frames_without_face) == (FRAMES, "voxceleb256",
                                                                                               "deca", 0)
    assert not summary.source_from_store and not summary.driving_from_store
    assert [p.name for p in output.parent.iterdir()] == ["cross.mp4"]  # no partial file beside it

    # frame k of the file is G(truncate(w_source + A(Δp_k))), computed here by hand from the same inputs
    networks = networks_for(config)
    face, track = prepare_inputs(str(clips["whole"]), str(PHOTOS / "obama.jpg"), 0, "cross", config,
                                 networks_for(config))
    reenactor = networks.reenactor
    wplus = torch.as_tensor(face.wplus[None])
    delta = reenactor.delta_p(torch.as_tensor(face.params[None]), torch.as_tensor(track.params[[0, 9]]))
    with torch.no_grad():
        expected = reenactor.generator.synthesis(reenactor.shifted_wplus(wplus, delta)).image
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    written = decode(output)[[0, 9]].astype(np.float32)
    assert np.abs(written - expected).mean() < 4  # H.264 at crf 18 of these images
    assert np.abs(written[0] - written[1]).mean() > 2 * np.abs(written - expected).mean()  # the frames do differ


def test_a_stored_driving_clip_and_its_stages_are_read_instead_of_recomputed(clips, config, official_weights,
                                                                             tmp_path):
    store = tmp_path / "d.zarr"
    assert preprocess_dataset(input=str(clips["whole"].parents[2]), store=str(store)).ok == 1
    encode_dataset(store=str(store), config=EncodeConfig(face3d="deca", encoder="e4e-voxceleb256",
                                                         weights_dir=str(official_weights), batch_size=8),
                   measure_ranges=False)
    stored = reenact_video(driving=str(clips["whole"]), mode="self", output=str(tmp_path / "stored.mp4"),
                           config=config, store=str(store))
    assert stored.driving_from_store and stored.source_from_store and stored.frames == FRAMES
    assert stored.source.startswith("clip:id01/talk/00001")
    fresh = reenact_video(driving=str(clips["whole"]), mode="self", output=str(tmp_path / "fresh.mp4"), config=config)
    assert not fresh.driving_from_store
    # the same crops, parameters and (float16) W+ codes: the two files agree to compression noise
    assert np.abs(decode(tmp_path / "stored.mp4").astype(int) - decode(tmp_path / "fresh.mp4")).mean() < 2
    by_key = reenact_video(driving="clip:id01/talk/00001", source="clip:id01/talk/00001", source_frame=5,
                           output=str(tmp_path / "key.mp4"), config=config, store=str(store))
    assert by_key.source == "clip:id01/talk/00001 frame 5" and by_key.has_audio


def test_cache_writes_a_new_driving_video_into_the_store_first(clips, config, tmp_path):
    store = tmp_path / "cache.zarr"
    summary = reenact_video(driving=str(clips["gap"]), source=str(PHOTOS / "biden.jpg"), output=str(tmp_path / "c.mp4"),
                            config=config, store=str(store), cache=True)
    assert summary.driving_from_store
    clip_store = ClipStore.open(store, create=False)
    (key,) = clip_store.clips()
    assert clip_store.clip(key).stages == ["face3d"]  # the driver's parameters; W+ only for sources
    assert clip_store.stage_attrs(key, "face3d")["backend"] == "deca"
    # the same file at another frame rate would need the same key: caching refuses to replace the stored clip
    with pytest.raises(ReenactInputError, match="already holds .* give --fps 25.0 to use it"):
        reenact_video(driving=str(clips["gap"]), source=str(PHOTOS / "biden.jpg"), output=str(tmp_path / "d.mp4"),
                      config=config.model_copy(update={"fps": 12.5}), store=str(store), cache=True)
    assert clip_store.clips() == [key] and clip_store.attrs(key)["fps"] == 25.0


def test_grid_and_paste_back_layouts(clips, config, tmp_path):
    grid = reenact_video(driving=str(clips["whole"]), source=str(PHOTOS / "obama.jpg"),
                         output=str(tmp_path / "grid.mp4"), config=config.model_copy(update={"grid": True}))
    assert (grid.width, grid.height) == (3 * 256, 256)
    first = decode(tmp_path / "grid.mp4")[0].astype(int)
    driving_crop = decode(clips["whole"])[0]
    assert first[:, 256:512].std() > 10 and first.shape == (256, 768, 3)
    pasted = reenact_video(driving=str(clips["whole"]), source=str(PHOTOS / "obama.jpg"),
                           output=str(tmp_path / "paste.mp4"), config=config.model_copy(update={"paste_back": True}))
    assert (pasted.width, pasted.height) == driving_crop.shape[1::-1]  # the driving video's own frame size
    frame = decode(tmp_path / "paste.mp4")[0].astype(int)
    corner = (slice(0, 12), slice(0, 12))  # far from the face: the driving frame as it was
    assert np.abs(frame[corner] - driving_crop[corner]).mean() < 4


def test_face_less_stretches_keep_the_last_good_parameters_and_are_recorded(clips, config, tmp_path):
    summary = reenact_video(driving=str(clips["gap"]), source=str(PHOTOS / "obama.jpg"),
                            output=str(tmp_path / "gap.mp4"), config=config)
    assert summary.frames == FRAMES and summary.frames_without_face == 4
    assert summary.stretches_without_face == [(4, 8)]
    assert probe(tmp_path / "gap.mp4").frames == FRAMES
    track = prepare_driving(str(clips["gap"]), config.model_copy(update={"smoothing": 0.0}), networks_for(config))
    assert not track.read[4:8].any() and track.read[:4].all() and track.read[8:].all()
    assert np.array_equal(track.params[4:8], np.repeat(track.params[3:4], 4, axis=0))


def test_smoothing_removes_frame_to_frame_jitter_of_the_parameters(clips, config):
    raw = prepare_driving(str(clips["whole"]), config.model_copy(update={"smoothing": 0.0}), networks_for(config)).params
    smooth = prepare_driving(str(clips["whole"]), config.model_copy(update={"smoothing": 2.0}), networks_for(config)).params
    jitter = lambda params: np.abs(np.diff(params, 2, axis=0)).mean()  # noqa: E731 (second differences)
    assert jitter(smooth) < 0.5 * jitter(raw)


def test_bad_inputs_are_clear_errors_that_leave_no_output(clips, config, tmp_path):
    output = tmp_path / "never.mp4"
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (120, 120, 120)).save(blank)
    not_video = tmp_path / "text.mp4"
    not_video.write_text("not a video")
    cases = [
        (dict(driving=str(clips["whole"]), source=str(blank)), ReenactInputError, "no face found"),
        (dict(driving=str(clips["faceless"]), source=str(PHOTOS / "obama.jpg")), ReenactInputError,
         "no face detected in any of 15 frames"),
        (dict(driving=str(clips["whole"]), source=str(clips["whole"]), source_frame=99), ReenactInputError,
         "has 15 frames .* no frame 99"),
        (dict(driving=str(tmp_path / "missing.mp4"), source=str(PHOTOS / "obama.jpg")), FileNotFoundError,
         "driving video not found"),
        (dict(driving=str(not_video), source=str(PHOTOS / "obama.jpg")), ReenactInputError, "driving video .*text.mp4"),
        (dict(driving=str(clips["whole"]), source=str(not_video)), ReenactInputError, "neither an image nor a video"),
        (dict(driving=str(clips["whole"]), source=str(tmp_path)), ReenactInputError, "is not a file"),
        (dict(driving=str(clips["whole"]), source=str(blank), mode="self"), ReenactInputError, "give no source"),
        (dict(driving=str(clips["whole"])), ReenactInputError, "needs a source"),
        (dict(driving="clip:a/b/c", source=str(PHOTOS / "obama.jpg")), ReenactInputError, "give the store too"),
        (dict(driving=str(clips["whole"]), source=str(blank), source_frame=-1), ReenactInputError, "0 or more"),
    ]
    for arguments, error, message in cases:
        with pytest.raises(error, match=message):
            reenact_video(output=str(output), config=config, **arguments)
        assert not output.exists()
    with pytest.raises(UnknownWeightsError, match="no weights set named 'ffhq'; known: voxceleb256, demo"):
        reenact_video(driving=str(clips["whole"]), source=str(blank), output=str(output),
                      config=config.model_copy(update={"weights": "ffhq"}))
    with pytest.raises(ReenactInputError, match="must be an .mp4"):
        reenact_video(driving=str(clips["whole"]), source=str(PHOTOS / "obama.jpg"), output=str(tmp_path / "x.avi"),
                      config=config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.png", "text.mp4"]


def test_a_failure_while_rendering_leaves_nothing_behind(clips, config, tmp_path, monkeypatch):
    networks = networks_for(config)
    real, calls = networks.generate, []

    def fails_on_the_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (injected)")
        return real(*args)

    monkeypatch.setattr(networks, "generate", fails_on_the_second_batch)
    with pytest.raises(RuntimeError, match="injected"):
        reenact_video(driving=str(clips["whole"]), source=str(PHOTOS / "obama.jpg"),
                      output=str(tmp_path / "half.mp4"), config=config)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_command_line_runs_the_flow_and_reports_errors_in_one_line(clips, official_weights, tmp_path):
    reenact = str(BIN / "reenact")
    output = tmp_path / "cli.mp4"
    done = subprocess.run([reenact, "reenact-video", str(clips["whole"]), "--source", str(PHOTOS / "astronaut.jpg"),
                           "-o", str(output), "--weights-dir", str(official_weights), "--face3d", "landmark-fit",
                           "--grid"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"video: {output}" in done.stdout and "15 frames at 25 fps, 768x256, with audio" in done.stdout
    assert probe(output).frames == FRAMES
    bad = subprocess.run([reenact, "reenact-video", str(clips["whole"]), "--source", str(PHOTOS / "astronaut.jpg"),
                          "--weights", "nope", "-o", str(tmp_path / "bad.mp4")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "error: no weights set named 'nope'" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr and not (tmp_path / "bad.mp4").exists()


# --- the stream: stages, cuts, failures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_config() -> ReenactConfig:
    """The bundled demo set: its small networks keep these runs short."""
    return ReenactConfig(weights="demo", device="cpu", grid=True)


def _stage_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("stage-")]


def test_the_summary_reports_every_stage_and_the_first_frame(clips, demo_config, tmp_path):
    face = prepare_source(str(PHOTOS / "obama.jpg"), 0, demo_config, networks_for(demo_config))
    summary = reenact(str(clips["whole"]), face, tmp_path / "s.mp4", demo_config, networks_for(demo_config))
    assert list(summary.stage_seconds) == ["decode", "follow faces", "crop boxes", "crop", "read faces",
                                              "parameters", "generate", "compose", "encode"]
    assert all(seconds >= 0 for seconds in summary.stage_seconds.values())
    assert 0 < summary.seconds_to_first_frame < summary.seconds_render
    # the detector ran on the first frame and on the key frames (every 8th) only; the face was found at the
    # working scale (the demo clip is 320 px: searched as it is)
    assert summary.detections == {"start": 1, "lost": 0, "schedule": 1, "degraded": 0, "cut": 0}
    assert summary.face_scale == 1.0 and summary.frames == FRAMES


def test_a_hard_cut_in_the_driving_video_re_detects_the_face(demo_config, tmp_path):
    first = decode(DEMO_CLIP)[:12]
    second = decode(DEMO_VIDEOS / "id00003" / "biden000001" / "00001.mp4")[:12]  # another person, framed otherwise
    driving = write_clip(tmp_path / "cut.mp4", np.concatenate([first, second]))
    face = prepare_source(str(PHOTOS / "obama.jpg"), 0, demo_config, networks_for(demo_config))
    summary = reenact(str(driving), face, tmp_path / "cut-out.mp4", demo_config, networks_for(demo_config))
    assert summary.detections["cut"] == 1 and summary.frames_without_face == 0
    # the crops follow the new face from the cut on: the driving panel of the grid shows a face, not the background
    track = prepare_driving(str(driving), demo_config.model_copy(update={"detect_every": 1}), networks_for(demo_config))
    followed = prepare_driving(str(driving), demo_config, networks_for(demo_config))
    centres = lambda boxes: (boxes[:, :2] + boxes[:, 2:]) / 2  # noqa: E731
    sides = track.boxes[:, 2] - track.boxes[:, 0]
    assert (np.linalg.norm(centres(followed.boxes) - centres(track.boxes), axis=1) < 0.05 * sides).all()


def _fails_on(call: int, real, error: Exception):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise error
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("stage", ["decode", "follow faces", "read faces", "generate", "compose", "encode"])
def test_a_failure_in_any_stage_stops_the_stream_cleanly(clips, demo_config, tmp_path, monkeypatch, stage):
    import tasks.reenact
    from models.detect.track import FaceTracker
    from storage.video import VideoError, VideoWriter

    networks = networks_for(demo_config)
    face = prepare_source(str(PHOTOS / "obama.jpg"), 0, demo_config, networks_for(demo_config))
    injected = RuntimeError(f"{stage} failed (injected)")
    if stage == "decode":
        real_decoded = tasks.reenact.decoded

        def decoded(reader, batch):
            for frame in real_decoded(reader, batch):
                if frame.index == 6:
                    raise VideoError("cannot decode frame 7 (injected)")
                yield frame

        monkeypatch.setattr(tasks.reenact, "decoded", decoded)
        injected = VideoError("cannot decode frame 7 (injected)")
    elif stage == "follow faces":
        monkeypatch.setattr(FaceTracker, "__call__", _fails_on(5, FaceTracker.__call__, injected))
    elif stage == "read faces":
        monkeypatch.setattr(networks, "estimate", _fails_on(1, networks.estimate, injected))
    elif stage == "generate":
        monkeypatch.setattr(networks, "generate", _fails_on(3, networks.generate, injected))
    elif stage == "compose":
        monkeypatch.setattr(tasks.reenact, "_even", _fails_on(4, tasks.reenact._even, injected))
    else:
        monkeypatch.setattr(VideoWriter, "write", _fails_on(5, VideoWriter.write, injected))
    output = tmp_path / "out" / "never.mp4"
    with pytest.raises(type(injected), match="injected"):
        reenact(str(clips["whole"]), face, output, demo_config, networks_for(demo_config))
    assert not _stage_threads()  # every stage's thread has ended
    assert not output.parent.exists() or list(output.parent.iterdir()) == []  # no file, no partial file
