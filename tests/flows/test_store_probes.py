"""The store and input probes of issue 14, each as a real file through the real flows (Prefect, Zarr, dlib)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from flows.cli import app
from flows.preprocess_dataset import preprocess_dataset
from storage.manifest import read_manifest, record_row
from storage.store import ClipKey, ClipStore, MissingChunkError
from tasks.preprocess import PreprocessConfig
from tests.media import DEMO_VIDEOS, absurd_time_base, damaged_middle, face_frames, truncated, write_clip

CONFIG = PreprocessConfig(fps=25, batch_size=16)
DEMO = DEMO_VIDEOS / "id00001" / "astronaut01" / "00001.mp4"  # 50 frames, 25 fps
NAMED = ClipKey.from_names("Jöhn Smith", "holiday video", "clip 1")
cli = CliRunner()


def _arrays(store: ClipStore, key: ClipKey) -> dict[str, np.ndarray]:
    clip = store.clip(key)
    return {name: clip[name][:] for name in ("crops", "landmarks", "boxes", "has_face", "faces")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox")
    for folder in ("id1/v", "Jöhn Smith/holiday video", "trunc/v", "damaged/v", "timebase/v"):
        (root / folder).mkdir(parents=True)
    write_clip(root / "id1/v/00001.mp4", face_frames(16))
    write_clip(root / "Jöhn Smith/holiday video/clip 1.mp4", face_frames(12, name="obama.jpg"))
    whole = write_clip(tmp_path_factory.mktemp("whole") / "whole.mp4", face_frames(50), audio=True)
    truncated(root / "trunc/v/00001.mp4", whole, keep=0.7)  # 12 of its 50 frames are left
    damaged_middle(root / "damaged/v/00001.mp4", DEMO)  # frame 26 of 50 is damaged
    absurd_time_base(root / "timebase/v/00001.mp4", DEMO)  # 50 frames whose times say 0.002 fps
    return root


@pytest.fixture(scope="module")
def first_run(inputs, tmp_path_factory):
    store = tmp_path_factory.mktemp("out") / "d.zarr"
    summary = preprocess_dataset(input=str(inputs), store=str(store), config=CONFIG)
    return summary, ClipStore.open(store), read_manifest(store / "manifest.parquet").set_index("identity")


def test_truncated_damaged_and_broken_time_base_files_fail_with_their_reasons(first_run):
    summary, store, manifest = first_run
    assert (summary.clips, summary.ok, summary.failed) == (5, 2, 3)
    trunc = manifest.loc["trunc"]
    assert trunc["status"] == "failed" and "cannot decode past frame 12 of the 50 its container declares" in trunc["error"]
    assert "12 frames readable" in trunc["error"] and "--accept-truncated" in trunc["error"]
    assert (trunc["readable_frames"], trunc["declared_frames"], trunc["truncated"]) == (12, 50, True)
    damaged = manifest.loc["damaged"]
    assert damaged["status"] == "failed" and damaged["readable_frames"] == 25
    assert "cannot decode frame 26 of 50 (the decoder reports a damaged frame); 25 frames readable" in damaged["error"]
    timebase = manifest.loc["timebase"]
    assert timebase["status"] == "failed" and "implausible time stamps" in timebase["error"]
    assert "627,201 frames" in timebase["error"] and "at most 10 allowed" in timebase["error"]
    assert timebase["seconds_total"] < 5  # refused from the packet times, before decoding a frame
    assert not store.has(ClipKey("trunc", "v", "00001")) and not store.has(ClipKey("timebase", "v", "00001"))


def test_names_with_spaces_and_other_letters_are_processed(first_run):
    _, store, manifest = first_run
    assert NAMED.path == "J%C3%B6hn%20Smith/holiday%20video/clip%201" and store.clips() == sorted(
        [ClipKey("id1", "v", "00001"), NAMED])
    row = manifest.loc[NAMED.identity]
    assert row["status"] == "ok" and row["name"] == "Jöhn Smith/holiday video/clip 1" and row["frames"] == 12
    assert store.attrs(NAMED)["name"] == {"identity": "Jöhn Smith", "video": "holiday video", "clip": "clip 1"}
    assert len(manifest) == 5 and not manifest.reset_index().duplicated(["identity", "video", "clip"]).any()


def test_accept_truncated_keeps_the_readable_part_and_says_so(inputs, tmp_path):
    listing = tmp_path / "broken.csv"
    listing.write_text("path\ntrunc/v/00001.mp4\ndamaged/v/00001.mp4\n")
    store_path = tmp_path / "d.zarr"
    config = CONFIG.model_copy(update={"accept_truncated": True})
    summary = preprocess_dataset(input=str(listing), store=str(store_path), config=config, input_root=str(inputs))
    assert (summary.ok, summary.failed) == (2, 0)
    store, manifest = ClipStore.open(store_path), read_manifest(store_path / "manifest.parquet").set_index("identity")
    for identity, readable, reason in (("trunc", 12, "the file ends early"),
                                       ("damaged", 25, "frame 26: the decoder reports a damaged frame")):
        key = ClipKey(identity, "v", "00001")
        row, attrs = manifest.loc[identity], store.attrs(key)
        assert row["truncated"] and row["readable_frames"] == readable and row["decode_error"] == reason
        assert attrs["truncated"] and attrs["readable_frames"] == readable and attrs["declared_frames"] == 50
        # resampled to 25 fps by time: a frame missing between the readable ones repeats its neighbour
        assert row["frames"] == attrs["frames"] == len(store.clip(key)) and readable <= row["frames"] <= readable + 1
    again = preprocess_dataset(input=str(listing), store=str(store_path), config=config, input_root=str(inputs))
    assert again.skipped == 2


def test_one_key_from_several_files_is_an_error_not_an_overwrite(inputs, tmp_path):
    listing = tmp_path / "clips.csv"
    pd.DataFrame({"path": ["id1/v/00001.mp4", "Jöhn Smith/holiday video/clip 1.mp4", "trunc/v/00001.mp4",
                           "id1/v/00001.mp4"],
                  "identity": ["same"] * 4, "video": ["v"] * 4, "clip": ["00001"] * 4}).to_csv(listing, index=False)
    store_path = tmp_path / "d.zarr"
    summary = preprocess_dataset(input=str(listing), store=str(store_path), config=CONFIG, input_root=str(inputs))
    manifest = read_manifest(store_path / "manifest.parquet")
    assert (summary.clips, summary.failed) == (1, 1) and len(manifest) == 1
    error = manifest["error"][0]
    assert "clip key same/v/00001 is claimed by 3 different files" in error
    for name in ("id1/v/00001.mp4", "clip 1.mp4", "trunc/v/00001.mp4"):
        assert name in error
    assert ClipStore.open(store_path).clips() == []


def test_a_deleted_chunk_is_an_error_and_the_next_run_recomputes_it(first_run, inputs, tmp_path):
    _, store, _ = first_run
    copy = ClipStore.open(shutil.copytree(store.root, tmp_path / "d.zarr", symlinks=True))
    key = ClipKey("id1", "v", "00001")
    before = _arrays(copy, key)
    (copy.clip_dir(key) / "crops" / "c" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(MissingChunkError, match="clip id1/v/00001: array 'crops' chunk c/0/0/0/0 is missing"):
        copy.clip(key).frames(0, 1)
    listing = tmp_path / "one.csv"
    listing.write_text("path\nid1/v/00001.mp4\n")
    summary = preprocess_dataset(input=str(listing), store=str(copy.root), config=CONFIG, input_root=str(inputs))
    assert (summary.ok, summary.skipped) == (1, 0)  # never skipped while it fails the check
    after = _arrays(copy, key)
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_store_verify_reports_and_repairs_and_store_info_shows_failures(first_run, tmp_path):
    _, store, _ = first_run
    copy = ClipStore.open(shutil.copytree(store.root, tmp_path / "d.zarr", symlinks=True))
    key = ClipKey("id1", "v", "00001")
    before = _arrays(copy, key)
    chunk = copy.clip_dir(key) / "crops" / "c" / "0" / "0" / "0" / "0"
    chunk.write_bytes(bytes(b ^ 0x5A for b in chunk.read_bytes()))  # same size: only a full check sees it

    result = cli.invoke(app, ["store-verify", str(copy.root)])
    assert result.exit_code == 1, result.output
    assert "id1/v/00001: crops chunk c/0/0/0/0: bytes changed (checksum mismatch)" in result.output
    assert "2 clips checked" in result.output and "1 whole, 1 damaged" in result.output
    quick = cli.invoke(app, ["store-verify", str(copy.root), "--quick"])
    assert quick.exit_code == 0 and "2 whole, 0 damaged" in quick.output

    result = cli.invoke(app, ["store-verify", str(copy.root), "--repair"])
    assert result.exit_code == 0, result.output
    assert "preprocessed again from" in result.output
    after = _arrays(copy, key)
    assert all(np.array_equal(before[name], after[name]) for name in before)
    assert cli.invoke(app, ["store-verify", str(copy.root)]).exit_code == 0

    # the source is gone: the clip is marked failed in the manifest, and store-info shows why
    source = tmp_path / "moved.mp4"
    shutil.copy(copy.attrs(NAMED)["source_path"], source)
    record_row(copy.manifest_path, {"identity": NAMED.identity, "video": NAMED.video, "clip": NAMED.clip,
                                    "status": "ok", "source_path": str(source)})
    with open(copy.clip_dir(NAMED) / "zarr.json", "w") as handle:
        handle.write("{ damaged")  # unreadable metadata: the manifest row says where the source was
    source.unlink()
    result = cli.invoke(app, ["store-verify", str(copy.root), "--repair"])
    assert result.exit_code == 1 and "marked failed in the manifest: its source is gone" in result.output
    row = read_manifest(copy.manifest_path).set_index("identity").loc[NAMED.identity]
    assert row["status"] == "failed" and "metadata unreadable" in row["error"] and "is gone" in row["error"]

    info = cli.invoke(app, ["store-info", str(copy.root)])
    assert info.exit_code == 0, info.output
    text = " ".join(info.output.split())
    assert f"failed {NAMED}: store-verify: metadata unreadable" in text
    assert "failed trunc/v/00001: truncated: cannot decode past frame 12" in text
    assert "5 rows: 1 ok, 0 skipped, 4 failed" in text


def test_store_info_renders_a_manifest_with_empty_cells(first_run):
    """A manifest whose `error` column holds NaN (parquet's empty float cell) and rows with few columns."""
    _, store, _ = first_run
    manifest = read_manifest(store.manifest_path)
    manifest["error"] = manifest["error"].where(manifest["status"] == "failed", np.nan)
    manifest.to_parquet(store.manifest_path, index=False)
    assert manifest["error"].isna().sum() == 2
    info = cli.invoke(app, ["store-info", str(store.root)])
    assert info.exit_code == 0, info.output
    text = " ".join(info.output.split())
    assert "5 rows: 2 ok, 0 skipped, 3 failed" in text and "failed timebase/v/00001: implausible time stamps" in text
    assert "Jöhn Smith/holiday video/clip 1" in text
