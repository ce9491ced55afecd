"""Checking and repairing clips without preprocessing: damaged stages, unreadable clips whose source is unknown."""

from __future__ import annotations

import numpy as np

from storage.manifest import read_manifest
from storage.store import ArraySpec, ClipKey, ClipStore
from tasks.verify import repair_clip, verify_clips

KEY = ClipKey("id1", "v1", "c1")


def _clip_with_stage(tmp_path) -> ClipStore:
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    with store.write_clip(KEY, expect={"crops": ArraySpec("uint8", (None, 8, 8, 3))}) as clip:
        clip.put("crops", np.full((8, 8, 8, 3), 9, np.uint8))
    with store.write_stage(KEY, "face3d", expect={"params": ArraySpec("float32", (None, 15))}) as stage:
        stage.put("params", np.ones((8, 15), np.float32))
        stage.set_attrs(config_hash="abc")
    return store


def test_a_damaged_stage_is_removed_for_encode_dataset_to_redo(tmp_path):
    store = _clip_with_stage(tmp_path)
    assert verify_clips(store, [KEY]) == []
    (store.clip_dir(KEY) / "face3d" / "params" / "c" / "1" / "0").unlink()
    (report,) = verify_clips(store, [KEY])
    assert report.problems == ["stage face3d: params chunk c/1/0: missing"]
    repaired = repair_clip(store, report)
    assert repaired.repaired and "run encode-dataset" in repaired.action
    assert store.clip(KEY).stages == [] and store.stage_attrs(KEY, "face3d") is None
    assert verify_clips(store, [KEY]) == [] and int(store.clip(KEY).frames().min()) == 9  # the clip is untouched


def test_a_clip_with_unreadable_metadata_and_no_record_of_its_source_is_marked_failed(tmp_path):
    store = _clip_with_stage(tmp_path)
    (store.clip_dir(KEY) / "zarr.json").write_text("{")
    (report,) = verify_clips(store, [KEY])
    assert report.problems[0].startswith("metadata unreadable")
    repaired = repair_clip(store, report)
    assert not repaired.repaired and "its source is gone" in repaired.action
    row = read_manifest(store.manifest_path).iloc[0]
    assert row["status"] == "failed" and "its source (not recorded) is gone" in row["error"]
