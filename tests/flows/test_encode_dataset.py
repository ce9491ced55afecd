"""The encode-dataset flow on a real store of the synthetic world: stages, inversions, skips, bad setups, resume."""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pandas as pd
import pytest
import torch

from flows.encode_dataset import MANIFEST, encode_dataset
from flows.make_synthetic_dataset import make_synthetic_dataset
from flows.preprocess_dataset import preprocess_dataset
from models import MissingWeightsError
from models.e4e import Encoder4Editing
from models.face3d import build_face3d
from storage.checkpoints import save_safetensors
from storage.files import sha256_file
from storage.manifest import read_manifest
from storage.store import ClipStore
from tasks.encode import EncodeConfig, encode_clip, ranges_path
from tasks.synthesize import SynthConfig
from tests.flows.test_resume_and_scale import _reenact

FACE3D_ONLY = EncodeConfig(stages=["face3d"], face3d="landmark-fit", batch_size=8)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """Three short synthetic clips, preprocessed into a store (never modified: tests encode copies of it)."""
    root = tmp_path_factory.mktemp("encode")
    world = make_synthetic_dataset(out=str(root / "world"), config=SynthConfig(
        identities=3, videos_per_identity=1, clips_per_video=1, min_seconds=0.6, max_seconds=0.8, seed=3))
    store = preprocess_dataset(input=world.out, store=str(root / "base.zarr"))
    assert store.ok == 3
    return root / "base.zarr"


@pytest.fixture()
def store(preprocessed, tmp_path) -> ClipStore:
    shutil.copytree(preprocessed, tmp_path / "d.zarr")
    return ClipStore.open(tmp_path / "d.zarr", create=False)


@pytest.fixture(scope="module")
def encoder_weights(tmp_path_factory):
    """An e4e of the official layout with fixed random weights, as the registry's demo encoder (fp16 on disk)."""
    weights = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    encoder = Encoder4Editing(50, "ir_se", 256).eval()
    save_safetensors({name: value.half() for name, value in encoder.state_dict().items()},
                     weights / "demo" / "encoder.safetensors")
    return weights


def test_face3d_stage_holds_the_backends_reading_of_every_crop(store):
    summary = encode_dataset(store=str(store.root), config=FACE3D_ONLY)
    assert (summary.clips, summary.ok, summary.failed) == (3, 3, 0)
    backend = build_face3d("landmark-fit")
    for key in store.clips():
        clip = store.clip(key)
        stage = clip.stage("face3d")
        assert clip.stages == ["face3d"]  # no inversion was asked for
        frames = len(clip)
        params, landmarks, found = stage["params"][:], stage["landmarks"][:], stage["found"][:]
        assert params.shape == (frames, 15 + backend.shape_size) and params.dtype == np.float32
        assert landmarks.shape == (frames, 68, 2) and found.dtype == bool and found.all()
        assert stage.attrs["backend"] == "landmark-fit" and stage.attrs["layout"][0] == ["yaw", 1]
        expected = backend.estimate(clip.frames(0, 3), clip.landmarks[0:3]).to_array()
        np.testing.assert_allclose(params[:3], expected, atol=1e-4)
    manifest = read_manifest(store.root / MANIFEST)
    assert list(manifest["status"]) == ["ok"] * 3 and list(manifest["stages_written"]) == ["face3d"] * 3


def test_ranges_table_is_min_max_of_the_found_frames(store):
    summary = encode_dataset(store=str(store.root), config=FACE3D_ONLY)
    table = np.load(summary.ranges)
    assert summary.ranges == str(ranges_path(store, "landmark-fit")) and table.shape == (54, 2)
    params = np.concatenate([store.clip(k).stage("face3d")["params"][:, :15] for k in store.clips()])
    np.testing.assert_array_equal(table[:15, 0], params.min(0))
    np.testing.assert_array_equal(table[:15, 1], params.max(0))
    assert np.isnan(table[15:]).all()


def test_rerun_skips_and_a_changed_backend_rewrites_only_its_stage(store):
    encode_dataset(store=str(store.root), config=FACE3D_ONLY, measure_ranges=False)
    meta = store.clip_dir(store.clips()[0]) / "face3d" / "zarr.json"
    written = meta.stat().st_mtime_ns
    again = encode_dataset(store=str(store.root), config=FACE3D_ONLY, measure_ranges=False)
    assert (again.ok, again.skipped) == (0, 3) and meta.stat().st_mtime_ns == written
    other = FACE3D_ONLY.model_copy(update={"face3d": "synth-regressor"})
    changed = encode_dataset(store=str(store.root), config=other, measure_ranges=False)
    assert changed.ok == 3
    assert store.stage_attrs(store.clips()[0], "face3d")["backend"] == "synth-regressor"


@pytest.mark.slow
def test_inversion_is_the_encoders_output_in_float16(store, encoder_weights):
    key = store.clips()[0]
    config = EncodeConfig(stages=["inversion"], encoder="demo-encoder", weights_dir=str(encoder_weights), batch_size=8)
    summary = encode_dataset(store=str(store.root), config=config, clips=[str(key)])
    assert (summary.clips, summary.ok) == (1, 1)
    clip = store.clip(key)
    stage = clip.stage("inversion")
    wplus = stage["wplus"][:]
    assert wplus.shape == (len(clip), 14, 512) and wplus.dtype == np.float16
    assert stage.attrs["encoder"] == "demo-encoder" and stage.attrs["precision"] == "fp32"
    assert stage.attrs["weights_sha256"] == sha256_file(encoder_weights / "demo" / "encoder.safetensors")
    from storage.weights import WeightsRegistry

    encoder = WeightsRegistry(encoder_weights).get("demo-encoder")
    with torch.no_grad():
        crops = torch.as_tensor(clip.frames(0, 2)).permute(0, 3, 1, 2).float() / 127.5 - 1
        expected = encoder(crops).numpy()
    np.testing.assert_allclose(wplus[:2].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert not np.allclose(wplus[0], wplus[-1])  # different frames, different codes
    assert store.clip(store.clips()[1]).stages == []  # only the listed clip


def test_missing_encoder_weights_stop_the_run_before_any_clip(store, tmp_path):
    config = EncodeConfig(encoder="e4e-voxceleb256", weights_dir=str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match=r"e4e-voxceleb\.pt"):
        encode_dataset(store=str(store.root), config=config)
    assert all(store.clip(key).stages == [] for key in store.clips())
    assert not (store.root / MANIFEST).exists()


def test_unknown_backend_and_clip_are_named(store):
    with pytest.raises(ValueError, match="unknown face3d backend 'nope'"):
        encode_dataset(store=str(store.root), config=FACE3D_ONLY.model_copy(update={"face3d": "nope"}))
    with pytest.raises(KeyError, match="id09999/x/00001"):
        encode_dataset(store=str(store.root), config=FACE3D_ONLY, clips=["id09999/x/00001"])
    with pytest.raises(FileNotFoundError, match="no clip store"):
        encode_dataset(store=str(store.root.parent / "missing.zarr"), config=FACE3D_ONLY)


@pytest.mark.slow
def test_a_broken_clip_fails_alone(store):
    broken = store.clips()[1]
    for chunk in (store.clip_dir(broken) / "crops" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"not a blosc frame")  # damaged on disk: decompressing the crops fails
    rows = [encode_clip(key, store, FACE3D_ONLY) for key in store.clips()]
    assert [row["status"] for row in rows] == ["ok", "failed", "ok"]
    assert rows[1]["error"] and store.clip(broken).stages == []


@pytest.mark.slow
def test_killed_run_resumes_with_whole_stages_only(store):
    args = ("encode-dataset", str(store.root), "--stages", "face3d", "--batch-size", "4", "--no-ranges")
    run = _reenact(*args)
    deadline = time.monotonic() + 300
    while (not list(store.root.glob("clips/*/*/*/face3d/zarr.json")) and time.monotonic() < deadline
           and run.poll() is None):
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    done_before = [key for key in store.clips() if store.stage_attrs(key, "face3d")]
    assert 1 <= len(done_before) < 3, "the kill should land mid-run"
    for key in done_before:  # a published stage is whole
        assert store.clip(key).stage("face3d")["found"][:].all()

    rerun = _reenact(*args)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    manifest = read_manifest(store.root / MANIFEST)
    skipped = {(r.identity, r.video, r.clip) for r in manifest.itertuples() if r.status == "skipped"}
    assert skipped == {(k.identity, k.video, k.clip) for k in done_before}
    assert len(manifest) == 3 and set(manifest["status"]) <= {"ok", "skipped"}
    assert all(store.stage_attrs(key, "face3d") for key in store.clips())
    assert not any((store.root / ".staging").iterdir())


def test_truth_columns_line_up_with_the_stored_parameters(store, preprocessed):
    """The synthetic truth can be joined to the store per frame (what the accuracy figures are computed from)."""
    encode_dataset(store=str(store.root), config=FACE3D_ONLY, measure_ranges=False)
    truth = pd.read_parquet(preprocessed.parent / "world" / "truth.parquet")
    key = store.clips()[0]
    rows = truth[(truth["identity"] == key.identity) & (truth["video"] == key.video) & (truth["clip"] == key.clip)]
    params = store.clip(key).stage("face3d")["params"][:]
    assert len(rows) == len(params)
    yaw_error = np.abs(params[:, 0] - rows.sort_values("frame")["yaw"].to_numpy()).mean()
    assert yaw_error < 8.0  # the landmark fit reads the rendered head's yaw to within a few degrees


@pytest.mark.slow
@pytest.mark.server
def test_dask_runner_with_two_workers_writes_what_a_local_run_writes(store, preprocessed, tmp_path, prefect_server):
    run = _reenact("encode-dataset", str(store.root), "--stages", "face3d", "--task-runner", "dask", "--workers", "2",
                   env=prefect_server)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    assert set(read_manifest(store.root / MANIFEST)["status"]) == {"ok"}
    local = ClipStore.open(shutil.copytree(preprocessed, tmp_path / "local.zarr"), create=False)
    key = store.clips()[2]
    encode_dataset(store=str(local.root), config=EncodeConfig(stages=["face3d"]), clips=[str(key)],
                   measure_ranges=False)
    np.testing.assert_array_equal(store.clip(key).stage("face3d")["params"][:],
                                  local.clip(key).stage("face3d")["params"][:])
