import json
import multiprocessing as mp

import numpy as np
import pytest

from storage.manifest import read_manifest, upsert_manifest
from storage.store import ClipKey, ClipStore


def _write(store: ClipStore, key: ClipKey, frames: int, value: int) -> None:
    with store.write_clip(key) as clip:
        crops = clip.create("crops", (frames, 8, 8, 3), "uint8")
        for start in range(0, frames, 5):
            crops[start : start + 5] = value
        clip.put("landmarks", np.full((frames, 68, 2), value, np.float32))
        clip.set_attrs(value=value, fps=np.float64(25.0))


def test_clip_key_round_trip_and_validation():
    key = ClipKey.parse("id10001/1zcIwhmdeo4/00001")
    assert key == ClipKey("id10001", "1zcIwhmdeo4", "00001") and str(key) == "id10001/1zcIwhmdeo4/00001"
    for bad in ("a/b", "../x/y", "a/b/c/d", "id1/.hidden/00001", "id1/v 1/00001"):
        with pytest.raises(ValueError):
            ClipKey.parse(bad)
    # YouTube ids, VoxCeleb's video names, may start with '_' or '-'
    assert ClipKey.parse("id10001/_S0QvOPVLzk/00001").video == "_S0QvOPVLzk"
    assert ClipKey.parse("id10001/-EK_Per8pJz/00001").video == "-EK_Per8pJz"


def test_write_then_read_lazily(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    key = ClipKey("id1", "v1", "c1")
    _write(store, key, frames=11, value=7)
    assert store.clips() == [key] and store.has(key)
    clip = store.clip(key)
    assert len(clip) == 11 and clip.crops.chunks == (4, 8, 8, 3)
    assert clip.frames(3, 6).shape == (3, 8, 8, 3) and int(clip.frames(3, 6).max()) == 7
    assert [len(b) for b in clip.iter_frames(4)] == [4, 4, 3]
    assert clip.attrs["value"] == 7 and store.attrs(key)["fps"] == 25.0
    assert clip.arrays == ["crops", "landmarks"]


def test_failed_write_publishes_nothing(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr")
    key = ClipKey("id1", "v1", "c1")
    with pytest.raises(RuntimeError):
        with store.write_clip(key) as clip:
            clip.create("crops", (4, 8, 8, 3), "uint8")
            raise RuntimeError("killed mid-clip")
    assert store.clips() == [] and not store.clip_dir(key).exists()
    assert list((store.root / ".staging").iterdir()) == []


def test_rewrite_replaces_whole_clip(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr")
    key = ClipKey("id1", "v1", "c1")
    _write(store, key, frames=10, value=1)
    _write(store, key, frames=6, value=2)
    clip = store.clip(key)
    assert len(clip) == 6 and int(clip.frames().min()) == 2 and clip.attrs["value"] == 2


def test_open_missing_store_without_create_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run preprocess-dataset first"):
        ClipStore.open(tmp_path / "nothing.zarr", create=False)


def _worker(root: str, identity: str) -> None:
    store = ClipStore.open(root)
    for n in range(4):
        _write(store, ClipKey(identity, "shared_video", f"c{n}"), frames=9, value=n + 1)


def test_concurrent_writers_do_not_corrupt_the_store(tmp_path):
    root = str(tmp_path / "d.zarr")
    ClipStore.open(root)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(root, identity)) for identity in ("idA", "idB", "idA")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ClipStore.open(root)
    assert len(store.clips()) == 8
    for key in store.clips():
        clip = store.clip(key)
        assert int(clip.frames().min()) == int(clip.frames().max()) == int(key.clip[1:]) + 1
    # group metadata of shared parents is valid JSON written once
    assert json.loads((store.root / "clips" / "idA" / "zarr.json").read_text())["node_type"] == "group"


def test_manifest_upsert_replaces_rows_of_the_same_clip(tmp_path):
    path = tmp_path / "manifest.parquet"
    upsert_manifest(path, [{"identity": "a", "video": "v", "clip": "1", "status": "failed", "error": "x"},
                           {"identity": "b", "video": "v", "clip": "1", "status": "ok", "error": None}])
    frame = upsert_manifest(path, [{"identity": "a", "video": "v", "clip": "1", "status": "ok", "error": None}])
    assert len(frame) == 2 and frame["status"].tolist() == ["ok", "ok"]
    assert read_manifest(path).equals(frame)
    with pytest.raises(ValueError, match="unknown manifest status"):
        upsert_manifest(path, [{"identity": "a", "video": "v", "clip": "1", "status": "done"}])


def test_stage_is_added_whole_and_replaced_whole(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    key = ClipKey("id1", "v1", "c1")
    _write(store, key, frames=10, value=3)
    assert store.stage_attrs(key, "face3d") is None and store.clip(key).stages == []
    with store.write_stage(key, "face3d") as stage:
        stage.put("params", np.arange(10 * 15, dtype=np.float32).reshape(10, 15))
        stage.set_attrs(config_hash="abc")
    clip = store.clip(key)
    assert clip.stages == ["face3d"] and clip.arrays == ["crops", "landmarks"]  # the clip's own arrays are untouched
    assert clip.stage("face3d")["params"].chunks == (4, 15)
    assert float(clip.stage("face3d")["params"][9, 14]) == 149 and store.stage_attrs(key, "face3d") == {"config_hash": "abc"}
    assert store.clips() == [key]  # a stage is not mistaken for a clip

    with pytest.raises(RuntimeError):  # a failed rewrite keeps the old stage
        with store.write_stage(key, "face3d") as stage:
            stage.put("params", np.zeros((10, 15), np.float32))
            raise RuntimeError("killed mid-stage")
    assert store.stage_attrs(key, "face3d") == {"config_hash": "abc"}
    with store.write_stage(key, "face3d") as stage:
        stage.put("params", np.zeros((10, 20), np.float32))
    assert store.clip(key).stage("face3d")["params"].shape == (10, 20)
    assert list((store.root / ".staging").iterdir()) == []

    with pytest.raises(KeyError, match="no 'inversion' stage"):
        store.clip(key).stage("inversion")
    with pytest.raises(ValueError, match="invalid stage name"):
        with store.write_stage(key, "crops"):
            pass
    with pytest.raises(KeyError, match="not in the store"):
        with store.write_stage(ClipKey("id1", "v1", "c9"), "face3d"):
            pass
