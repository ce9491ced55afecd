"""The reenact-dataset flow: the paper's protocols over a real store, a pair list, skips and redoes, bad pairs, Dask."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest

from flows.make_synthetic_dataset import make_synthetic_dataset
from flows.preprocess_dataset import preprocess_dataset
from flows.reenact_dataset import MANIFEST, PAIRS, reenact_dataset
from storage.manifest import read_manifest
from storage.store import ClipStore
from storage.video import probe
from tasks.protocols import cross_pairs, read_pairs, self_pairs
from tasks.reenact import ReenactConfig
from tasks.synthesize import SynthConfig
from tests.flows.conftest import BIN, ROOT
from tests.flows.test_reenact_video import decode
from tests.media import PHOTOS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three synthetic people, one short clip each (0.5-0.6 s), preprocessed into a store."""
    root = tmp_path_factory.mktemp("pairs")
    videos = make_synthetic_dataset(out=str(root / "world"), config=SynthConfig(
        identities=3, videos_per_identity=1, clips_per_video=1, min_seconds=0.5, max_seconds=0.6, seed=5))
    summary = preprocess_dataset(input=videos.out, store=str(root / "s.zarr"))
    assert summary.ok == 3
    return root


@pytest.fixture(scope="module")
def config(official_weights) -> ReenactConfig:
    return ReenactConfig(weights_dir=str(official_weights), face3d="landmark-fit")


def test_protocol_pairs_follow_the_paper(world):
    store = ClipStore.open(world / "s.zarr", create=False)
    own = self_pairs(store)
    assert [(p.driving, p.source, p.mode) for p in own] == [(f"clip:{key}", None, "self") for key in store.clips()]
    cross = cross_pairs(store, count=4, seed=1)
    assert len(cross) == 4 and len({(p.source, p.driving) for p in cross}) == 4
    for pair in cross:
        assert pair.source.split("/")[0] != pair.driving.split("/")[0]  # two different identities
    assert cross == cross_pairs(store, count=4, seed=1) and cross != cross_pairs(store, count=4, seed=2)
    assert len(cross_pairs(store, count=100, seed=0)) == 6  # every ordered pair of 3 people, no more


def test_self_protocol_reenacts_every_clip_and_a_rerun_skips_them(world, config, tmp_path):
    out = tmp_path / "self"
    first = reenact_dataset(out=str(out), store=str(world / "s.zarr"), protocol="self", config=config)
    assert (first.pairs, first.ok, first.failed) == (3, 3, 0)
    store = ClipStore.open(world / "s.zarr", create=False)
    manifest = read_manifest(out / MANIFEST)
    assert list(manifest["status"]) == ["ok"] * 3
    for row, key in zip(manifest.to_dict("records"), store.clips()):
        info = probe(row["output"])
        assert info.frames == len(store.clip(key)) == row["frames"] and info.fps == 25.0 and info.has_audio
    assert list(pd.read_parquet(out / PAIRS)["name"]) == list(manifest["name"])

    again = reenact_dataset(out=str(out), store=str(world / "s.zarr"), protocol="self", config=config)
    assert (again.ok, again.skipped) == (0, 3)
    (out / "videos" / f"{manifest['name'][0]}.json").unlink()  # as if killed between the video and its record
    changed = reenact_dataset(out=str(out), store=str(world / "s.zarr"), protocol="self", limit=2,
                              config=config.model_copy(update={"smoothing": 0.0}))
    assert (changed.ok, changed.skipped) == (2, 0)  # a changed setting redoes every pair
    assert list(read_manifest(out / MANIFEST)["status"]) == ["ok", "ok", "skipped"]  # the third row kept


def test_a_pair_list_with_a_bad_row_fails_that_row_alone(world, config, tmp_path):
    store = ClipStore.open(world / "s.zarr", create=False)
    driving = store.attrs(store.clips()[0])["source_path"]
    listing = tmp_path / "pairs.csv"
    pd.DataFrame([
        {"driving": driving, "source": str(PHOTOS / "obama.jpg"), "name": "obama"},
        {"driving": "missing.mp4", "source": str(PHOTOS / "obama.jpg"), "name": "missing"},
        {"driving": f"clip:{store.clips()[1]}", "source": f"clip:{store.clips()[2]}", "source_frame": 3},
    ]).to_csv(listing, index=False)
    pairs = read_pairs(listing)
    assert pairs[1].driving == str(tmp_path / "missing.mp4")  # relative to the list's folder
    assert pairs[2].name.startswith("00002_") and pairs[2].source_frame == 3
    summary = reenact_dataset(out=str(tmp_path / "out"), pairs=str(listing), store=str(world / "s.zarr"),
                              config=config)
    rows = read_manifest(tmp_path / "out" / MANIFEST).set_index("name")
    assert (summary.ok, summary.failed) == (2, 1)
    assert rows.loc["missing", "status"] == "failed" and "not found" in rows.loc["missing", "error"]
    assert not (tmp_path / "out" / "videos" / "missing.mp4").exists()
    assert probe(rows.loc["obama", "output"]).frames == len(store.clip(store.clips()[0]))


def test_bad_requests_are_refused_before_any_pair(world, config, tmp_path):
    with pytest.raises(ValueError, match="either a pair list"):
        reenact_dataset(out=str(tmp_path), config=config)
    with pytest.raises(ValueError, match="draws its pairs from a clip store"):
        reenact_dataset(out=str(tmp_path), protocol="cross", config=config)
    duplicate = tmp_path / "dup.csv"
    pd.DataFrame([{"driving": "a.mp4", "name": "x"}, {"driving": "b.mp4", "name": "x"}]).to_csv(duplicate, index=False)
    with pytest.raises(ValueError, match="repeated: x"):
        reenact_dataset(out=str(tmp_path), pairs=str(duplicate), config=config)
    assert not (tmp_path / MANIFEST).exists()


@pytest.mark.slow
@pytest.mark.server
def test_dask_runner_with_two_workers_reenacts_what_a_local_run_does(world, config, official_weights, tmp_path,
                                                                      prefect_server):
    run = subprocess.run([str(BIN / "reenact"), "reenact-dataset", str(tmp_path / "dask"), "--store",
                          str(world / "s.zarr"), "--protocol", "cross", "--count", "2", "--face3d", "landmark-fit",
                          "--weights-dir", str(official_weights), "--task-runner", "dask", "--workers", "2"],
                         env=prefect_server, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 pairs: 2 ok, 0 skipped, 0 failed" in run.stdout
    rows = read_manifest(tmp_path / "dask" / MANIFEST).to_dict("records")
    local = reenact_dataset(out=str(tmp_path / "local"), store=str(world / "s.zarr"), protocol="cross", count=2,
                            config=config, limit=1)
    assert local.ok == 1
    name = read_manifest(tmp_path / "local" / MANIFEST)["name"][0]
    (row,) = [row for row in rows if row["name"] == name]
    ours, theirs = decode(tmp_path / "local" / "videos" / f"{name}.mp4"), decode(row["output"])
    assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs).mean() < 1
