"""The make-synthetic-dataset flow for real: mp4 files in VoxCeleb layout, the truth table, resume, and the
preprocessing flow finding a face in every clip."""

from __future__ import annotations

import pandas as pd
import pytest

from flows.make_synthetic_dataset import make_synthetic_dataset
from flows.preprocess_dataset import preprocess_dataset
from models.directions import PARAM_NAMES
from storage.store import ClipKey, ClipStore
from storage.video import probe
from tasks.preprocess import PreprocessConfig
from tasks.synthesize import SynthConfig, plan_world, synthesize_clip

CONFIG = SynthConfig(identities=2, videos_per_identity=1, clips_per_video=2, min_seconds=1.0, max_seconds=1.6, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, make_synthetic_dataset(out=str(root), config=CONFIG)


def test_clips_are_real_25_fps_videos_with_audio(world):
    root, summary = world
    plans = plan_world(CONFIG)
    assert summary.clips == len(plans) == 4 and summary.rendered == 4
    assert len({plan.identity for plan in plans}) == 2
    for plan in plans:
        info = probe(plan.path(root))
        assert plan.path(root).relative_to(root).parts == (plan.identity, plan.video, f"{plan.clip}.mp4")
        assert (info.width, info.height, info.codec) == (256, 256, "h264")
        assert info.fps == pytest.approx(25.0) and info.has_audio
        assert info.frames == plan.frames and 25 <= plan.frames <= 40
    assert not list(root.rglob(".*"))  # no partial or temporary files left behind


def test_truth_has_one_row_per_frame(world):
    root, summary = world
    truth = pd.read_parquet(root / "truth.parquet")
    assert len(truth) == summary.frames == sum(plan.frames for plan in plan_world(CONFIG))
    assert set(PARAM_NAMES) <= set(truth.columns)
    for (identity, video, clip), rows in truth.groupby(["identity", "video", "clip"]):
        assert list(rows["frame"]) == list(range(probe(root / identity / video / f"{clip}.mp4").frames))
        assert rows["identity_seed"].nunique() == 1 and rows["hair_style"].nunique() == 1
    assert truth.groupby("identity")["identity_seed"].nunique().eq(1).all()
    assert truth["yaw"].std() > 1  # the heads move


def test_rerun_skips_finished_clips(world):
    root, _ = world
    stamps = {path: path.stat().st_mtime_ns for path in root.rglob("*.mp4")}
    again = make_synthetic_dataset(out=str(root), config=CONFIG)
    assert (again.skipped, again.rendered) == (4, 0)
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*.mp4")} == stamps

def test_changed_settings_render_again(world):
    root, _ = world
    plan = plan_world(CONFIG)[0]
    assert synthesize_clip(plan, root, CONFIG)["status"] == "skipped"
    assert synthesize_clip(plan, root, CONFIG.model_copy(update={"crf": 30}))["status"] == "rendered"


def test_preprocessing_finds_the_face_in_every_clip(world, tmp_path):
    root, _ = world
    summary = preprocess_dataset(input=str(root), store=str(tmp_path / "synthetic.zarr"), config=PreprocessConfig(fps=25))
    assert (summary.ok, summary.failed) == (4, 0)
    store = ClipStore.open(tmp_path / "synthetic.zarr", create=False)
    for plan in plan_world(CONFIG):
        clip = store.clip(ClipKey(plan.identity, plan.video, plan.clip))
        assert clip["has_face"][:].mean() >= 0.9 and len(clip) == plan.frames
