"""The store with several writers and damaged files: owned staging, checked publishing, atomic replacement, checked
reads. Real Zarr on disk, real processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import time

import numpy as np
import pytest

from storage.files import STALE_AFTER_S
from storage.store import (
    ArraySpec,
    ClipKey,
    ClipStore,
    CorruptChunkError,
    MissingChunkError,
    StoreError,
    decode_name,
    encode_name,
)

KEY = ClipKey("id1", "v1", "c1")
SPEC = {"crops": ArraySpec("uint8", (None, 8, 8, 3)), "landmarks": ArraySpec("float32", (None, 68, 2))}


def _write(store: ClipStore, key: ClipKey, frames: int, value: int) -> None:
    with store.write_clip(key, expect=SPEC) as clip:
        crops = clip.create("crops", (frames, 8, 8, 3), "uint8")
        for start in range(0, frames, 4):
            crops[start : start + 4] = value
        clip.put("landmarks", np.full((frames, 68, 2), value, np.float32))
        clip.set_attrs(value=value)


def _age(path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


# --- names ---------------------------------------------------------------------------------------------------------

def test_any_name_gets_a_stable_collision_free_key():
    names = ["id10001", "_S0QvOPVLzk", "Jöhn Smith", "a b", "a_b", "a%20b", ".hidden", "..", "张三的视频", "x~y",
             "a" * 300, "a" * 299 + "b", "caf\udce9"]  # the last: a Latin-1 file name that is not UTF-8
    keys = [encode_name(name) for name in names]
    assert len(set(keys)) == len(keys)  # collision-free, "a b" and "a_b" included
    assert keys[:2] == ["id10001", "_S0QvOPVLzk"]  # VoxCeleb names stay as they are
    assert keys[2] == "J%C3%B6hn%20Smith" and keys[5] == "a%2520b" and keys[6] == "%2Ehidden"
    assert [encode_name(name) for name in names] == keys  # stable
    for name, part in zip(names, keys):
        ClipKey(part, part, part)  # every encoded name is a valid key part
        assert len(part) <= 200
        assert decode_name(part) == (None if len(name) >= 200 else name)  # long names: kept in the clip's attrs
    assert ClipKey.from_names("Jöhn Smith", "holiday video", "clip 1").path == \
        "J%C3%B6hn%20Smith/holiday%20video/clip%201"


# --- staging is owned ----------------------------------------------------------------------------------------------

def _slow_writer(root: str, started, finish) -> None:
    store = ClipStore.open(root, chunk_frames=4)
    with store.write_clip(KEY, expect=SPEC) as clip:
        crops = clip.create("crops", (12, 8, 8, 3), "uint8")
        crops[:] = 5
        started.set()
        finish.wait(60)  # a long clip: another run starts meanwhile
        clip.put("landmarks", np.full((12, 68, 2), 5, np.float32))


def test_another_runs_cleaning_leaves_a_live_writers_staging_alone(tmp_path):
    root = str(tmp_path / "d.zarr")
    ClipStore.open(root)
    ctx = mp.get_context("spawn")
    started, finish = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_slow_writer, args=(root, started, finish))
    writer.start()
    assert started.wait(60)
    store = ClipStore.open(root)
    staged = [p for p in (store.root / ".staging").iterdir() if p.is_dir()]
    assert len(staged) == 1
    assert store.clean_staging() == 0 and staged[0].exists()  # the second run's start: nothing of the first removed
    lease = json.loads(staged[0].with_suffix(".lease").read_text())
    assert lease["pid"] == writer.pid and lease["host"] and lease["owner"]
    finish.set()
    writer.join(60)
    assert writer.exitcode == 0
    clip = store.clip(KEY)  # published whole
    assert clip.arrays == ["crops", "landmarks"] and int(clip.frames().min()) == 5 and store.check(KEY, full=True) == []
    assert list((store.root / ".staging").iterdir()) == []


def _killed_writer(root: str, started) -> None:
    store = ClipStore.open(root)
    with store.write_clip(KEY):
        started.set()
        time.sleep(600)


def test_only_stale_staging_is_removed(tmp_path):
    root = str(tmp_path / "d.zarr")
    store = ClipStore.open(root)
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    writer = ctx.Process(target=_killed_writer, args=(root, started))
    writer.start()
    assert started.wait(60)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    lease = next((store.root / ".staging").glob("*.lease"))
    record = json.loads(lease.read_text())
    assert store.clean_staging() == 1 and list((store.root / ".staging").iterdir()) == []  # its writer is gone

    # the same host name in another PID namespace (a container): its pid says nothing here, only its heartbeat does
    folder = store.root / ".staging" / "cafe"
    (folder / "crops").mkdir(parents=True)
    folder.with_suffix(".lease").write_text(json.dumps(record | {"pid_namespace": "pid:[1]"}))
    assert store.clean_staging() == 0 and folder.exists()

    # a writer on another machine: alive while it beats, stale after STALE_AFTER_S without a heartbeat
    other = store.root / ".staging" / "f00d"
    (other / "crops").mkdir(parents=True)
    other.with_suffix(".lease").write_text(json.dumps({"owner": "x", "host": "elsewhere", "pid": 1, "started": 0}))
    _age(other.with_suffix(".lease"), STALE_AFTER_S - 60)
    assert store.clean_staging() == 0 and other.exists()
    _age(other.with_suffix(".lease"), STALE_AFTER_S + 60)
    _age(folder.with_suffix(".lease"), STALE_AFTER_S + 60)
    assert store.clean_staging() == 2 and not other.exists() and not other.with_suffix(".lease").exists()
    assert list((store.root / ".staging").iterdir()) == []


# --- publishing is checked -----------------------------------------------------------------------------------------

def test_an_incomplete_clip_is_never_published(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    _write(store, KEY, frames=8, value=1)
    with pytest.raises(StoreError, match="landmarks: missing"):
        with store.write_clip(KEY, expect=SPEC) as clip:
            clip.create("crops", (8, 8, 8, 3), "uint8")[:] = 2
    with pytest.raises(StoreError, match=r"crops: 1 chunks never written \(first c/1/0/0/0\)"):
        with store.write_clip(KEY, expect=SPEC) as clip:
            clip.create("crops", (8, 8, 8, 3), "uint8")[:4] = 2
            clip.put("landmarks", np.zeros((8, 68, 2), np.float32))
    with pytest.raises(StoreError, match=r"landmarks: 7 frames, expected 8; .*shape \[8, 68\], expected \[T, 68, 2\]"):
        with store.write_clip(KEY, expect={**SPEC, "boxes": ArraySpec("float32", (None, 68, 2))}) as clip:
            clip.create("crops", (8, 8, 8, 3), "uint8")[:] = 2
            clip.put("landmarks", np.zeros((7, 68, 2), np.float32))
            clip.put("boxes", np.zeros((8, 68), np.float32))
    # the loss: another run deleted this writer's staging folder (crops and all) while it wrote
    with pytest.raises(StoreError, match="removed as stale by another run"):
        with store.write_clip(KEY, expect=SPEC) as clip:
            clip.create("crops", (8, 8, 8, 3), "uint8")[:] = 2
            clip.put("landmarks", np.zeros((8, 68, 2), np.float32))
            for entry in (store.root / ".staging").iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    clip = store.clip(KEY)  # the published clip is untouched by every refused write
    assert int(clip.frames().max()) == 1 and store.check(KEY, full=True) == []
    assert list((store.root / ".staging").iterdir()) == []


def test_a_black_clip_is_complete(tmp_path):
    """Chunks equal to the fill value are stored too, so a missing chunk file always means damage."""
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    _write(store, KEY, frames=9, value=0)
    assert len(list((store.clip_dir(KEY) / "crops" / "c").iterdir())) == 3
    assert store.check(KEY, full=True) == [] and int(store.clip(KEY).frames().max()) == 0


# --- reading is checked --------------------------------------------------------------------------------------------

def test_a_deleted_chunk_is_an_error_never_zeros(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    _write(store, KEY, frames=12, value=7)
    (store.clip_dir(KEY) / "crops" / "c" / "1" / "0" / "0" / "0").unlink()
    clip = store.clip(KEY)
    assert int(clip.frames(0, 4).min()) == 7  # the chunks that are there still read
    with pytest.raises(MissingChunkError, match=r"clip id1/v1/c1: array 'crops' chunk c/1/0/0/0 is missing.*"
                                                r"store-verify .* --repair"):
        clip.frames(4, 8)
    with pytest.raises(MissingChunkError):
        list(clip.iter_frames(5))
    assert store.check(KEY) == ["crops chunk c/1/0/0/0: missing"]


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_a_corrupt_chunk_names_the_clip(tmp_path, damage):
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    _write(store, KEY, frames=12, value=7)
    chunk = store.clip_dir(KEY) / "crops" / "c" / "2" / "0" / "0" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:20] if damage == "truncate" else bytes(b ^ 0x5A for b in data))
    with pytest.raises(CorruptChunkError, match=r"clip id1/v1/c1: array 'crops' chunk c/2/0/0/0 is corrupt"):
        store.clip(KEY).frames(8, 12)
    if damage == "truncate":  # the cheap check sees sizes
        assert store.check(KEY) == store.check(KEY, full=True) == [
            f"crops chunk c/2/0/0/0: 20 bytes, {len(data)} published"]
    else:  # the same size: only the full check reads the bytes
        assert store.check(KEY) == []
        assert store.check(KEY, full=True) == ["crops chunk c/2/0/0/0: bytes changed (checksum mismatch)"]


def test_changed_metadata_or_attributes_fail_the_check(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    _write(store, KEY, frames=8, value=3)
    meta = store.clip_dir(KEY) / "zarr.json"
    record = json.loads(meta.read_text())
    record["attributes"]["value"] = 4
    meta.write_text(json.dumps(record))
    assert store.check(KEY) == ["attributes changed since publishing"]
    meta.write_text("{ not json")
    assert store.check(KEY)[0].startswith("metadata unreadable")
    _write(store, ClipKey("id1", "v1", "c2"), frames=8, value=3)
    (store.root / "clips" / "id1" / "v1" / "c2" / "landmarks" / "zarr.json").unlink()
    assert store.check(ClipKey("id1", "v1", "c2")) == ["landmarks: array metadata missing"]


# --- replacing is atomic -------------------------------------------------------------------------------------------

def _replacer(root: str, ready) -> None:
    store = ClipStore.open(root, chunk_frames=4)
    value = 1
    while True:
        _write(store, KEY, frames=12, value=value)
        ready.set()
        value = value % 250 + 1


def test_a_replaced_clip_is_never_missing_even_when_the_writer_is_killed(tmp_path):
    root = str(tmp_path / "d.zarr")
    store = ClipStore.open(root, chunk_frames=4)
    _write(store, KEY, frames=12, value=0)
    ctx = mp.get_context("spawn")
    rng = np.random.default_rng(0)
    reads = 0
    for _ in range(3):
        ready = ctx.Event()
        writer = ctx.Process(target=_replacer, args=(root, ready))
        writer.start()
        assert ready.wait(60)
        deadline = time.monotonic() + rng.uniform(0.5, 2.0)
        while time.monotonic() < deadline:  # readers meanwhile: always a whole clip of one value
            clip = store.clip(KEY)
            frames = clip.frames()
            assert frames.shape == (12, 8, 8, 3) and frames.min() == frames.max() == clip.attrs["value"]
            reads += 1
        os.kill(writer.pid, signal.SIGKILL)  # wherever it is: writing, sealing, swapping, retiring
        writer.join()
        assert store.has(KEY) and store.check(KEY, full=True) == []
    assert reads > 10
    store.clean_staging()  # the killed writers' leftovers: their writers are gone
    assert list((store.root / ".staging").iterdir()) == [] and store.check(KEY, full=True) == []


def test_a_stage_computed_from_a_replaced_clip_is_not_published(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    _write(store, KEY, frames=8, value=1)
    old = store.clip(KEY)
    with store.write_stage(KEY, "face3d", expect={"p": ArraySpec("float32", (None, 3))}, base=old) as stage:
        stage.put("p", np.ones((8, 3), np.float32))
    assert store.clip(KEY).stages == ["face3d"] and store.check(KEY, full=True) == []
    with pytest.raises(StoreError, match=r"p: 7 frames, expected 8"):
        with store.write_stage(KEY, "face3d", expect={"p": ArraySpec("float32", (None, 3))}) as stage:
            stage.put("p", np.ones((7, 3), np.float32))
    old = store.clip(KEY)
    _write(store, KEY, frames=8, value=2)  # re-preprocessed meanwhile
    with pytest.raises(StoreError, match="was replaced while its face3d stage was computed"):
        with store.write_stage(KEY, "face3d", base=old) as stage:
            stage.put("p", np.ones((8, 3), np.float32))
    assert store.clip(KEY).stages == [] and int(old.frames().max()) == 1  # the old version still reads (grace)


def test_a_store_written_before_versions_is_upgraded_clip_by_clip(tmp_path):
    store = ClipStore.open(tmp_path / "d.zarr", chunk_frames=4)
    _write(store, KEY, frames=8, value=1)
    link = store.clip_dir(KEY)
    version = link.resolve()
    link.unlink()
    version.rename(link)  # the old layout: the clip's directory itself under clips/
    assert store.clips() == [KEY] and int(store.clip(KEY).frames().max()) == 1
    _write(store, KEY, frames=8, value=2)
    assert link.is_symlink() and int(store.clip(KEY).frames().max()) == 2 and store.check(KEY) == []
