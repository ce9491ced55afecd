"""The demo recipe without Prefect (`training.demo_recipe`): every stage at tiny scale in a process where Prefect,
PyAV and dlib cannot be imported (what a GPU machine with torch alone offers), resumable, packed and unpacked; the
world written straight into the store against the video -> preprocess path; provenance without machine paths."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models.synth.world import SynthConfig, plan_world
from storage.checkpoints import read_safetensors_metadata
from storage.checkpoints import load_safetensors
from storage.settings import PROJECT_ROOT
from storage.store import ClipKey, ClipStore
from storage.weights import BUNDLED_DIR, WEIGHT_FILES, WEIGHT_SETS
from tests.training import QUICK, TINY_E, TINY_G
from training.common.checkpoints import RunDir, latest_checkpoint, read_checkpoint
from training.demo_recipe import Work, symbolic_paths, true_landmarks, world_crops, write_world

TINY_WORLD = {"identities": 2, "videos_per_identity": 1, "clips_per_video": 2, "min_seconds": 0.4,
              "max_seconds": 0.4, "seed": 5}
QUICK_RUN = {**QUICK, "batch_size": 2, "checkpoint_every": 2}
TINY = {  # key=value overrides per stage: tiny networks, a few steps
    "world": TINY_WORLD,
    "generator": {**TINY_G, **QUICK_RUN, "steps": 4},
    "encoder": {**TINY_E, **QUICK_RUN, "steps": 4, "mean_latent_samples": 64},
    "directions": {**QUICK_RUN, "steps": 4, "real_steps": 2, "paired_steps": 2, "validation_count": 2,
                   "sample_count": 2, "mean_latent_samples": 64},
    "feature-transformer": {**QUICK_RUN, "steps": 2, "resolution": 16, "hidden": 8, "validation_count": 2,
                            "sample_count": 2, "mean_latent_samples": 64},
}
BLOCKED = ("prefect", "av", "dlib", "ffmpeg", "decord")  # absent on the GPU machine
WITHOUT_PREFECT = """
    import importlib.abc, sys
    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked}:
                raise ImportError(f"{{name}} is not installed here (blocked by the test)")
    sys.meta_path.insert(0, Absent())
    from training.demo_recipe import main
    for arguments in {calls}:
        main(arguments)
    assert not {{name for name in sys.modules if name.split(".")[0] in {blocked} + ("flows", "tasks")}}, "imported"
"""


def overrides(stage: str, **changes) -> list[str]:
    return [f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"
            for key, value in {**TINY.get(stage, {}), **changes}.items()]


def run_without_prefect(calls: list[list[str]], timeout: float = 1800) -> str:
    """`training.demo_recipe.main(arguments)` for each call, in one Python process that cannot import Prefect,
    PyAV or dlib; returns its output."""
    script = textwrap.dedent(WITHOUT_PREFECT).format(blocked=repr(BLOCKED), calls=repr(calls))
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> tuple[Path, str]:
    """Every stage of the recipe, tiny, without Prefect (about a minute on 2 cores)."""
    work = tmp_path_factory.mktemp("recipe") / "work"
    calls = [["--work", str(work), "--stage", stage, *overrides(stage)] for stage in
             ("world", "generator", "encoder", "encode", "directions", "feature-transformer")]
    return work, run_without_prefect(calls)


def test_every_stage_runs_with_torch_alone_and_installs_the_demo_set(recipe):
    work, output = recipe
    store = ClipStore.open(work / "world.zarr", create=False)
    plans = plan_world(SynthConfig(**TINY_WORLD))
    assert store.clips() == sorted(ClipKey(plan.identity, plan.video, plan.clip) for plan in plans)
    clip = store.clip(store.clips()[0])
    assert clip.crops.shape == (10, 256, 256, 3) and clip["has_face"][:].all()
    assert clip.stage("face3d")["params"].shape[0] == 10 and clip.stage("inversion")["wplus"].shape[0] == 10
    assert (work / "world.zarr" / "ranges-synth-regressor.npy").is_file()
    for name in WEIGHT_SETS["demo"]:
        installed = work / "weights" / WEIGHT_FILES[name].filename
        assert installed.is_file(), name
        training = read_safetensors_metadata(installed)["training"]  # the stage's config, paths as symbols
        assert training["store"] == "<work>/world.zarr" and not absolute_paths(training), name
    provenance = json.loads((work / "weights" / "demo" / "provenance.json").read_text())
    assert set(provenance["stages"]) == {"generator", "encoder", "directions", "feature_transformer"}
    assert provenance["stages"]["generator"]["steps"] == 4 and provenance["training_world"]["identities"] == 2
    assert provenance["stages"]["directions"]["config"]["store"] == "<work>/world.zarr"
    assert set(provenance["files"]) == set(WEIGHT_SETS["demo"]) and provenance["heldout"] is None
    assert not absolute_paths(provenance)
    assert "feature-transformer:" in output


def test_a_stage_resumes_and_a_packed_run_continues_elsewhere(recipe, tmp_path):
    work, _ = recipe
    parts = tmp_path / "parts"
    other = tmp_path / "elsewhere"
    output = run_without_prefect([
        ["--work", str(work), "--stage", "generator", "--pack", str(parts)],
        ["--work", str(work), "--stage", "encoder", "--pack", str(parts)],  # finished: installed where unpacked
        ["--work", str(other), "--unpack", str(parts)],
        ["--work", str(other), "--stage", "world", *overrides("world")],  # a fresh machine renders its world again
        ["--work", str(other), "--stage", "generator", *overrides("generator", steps=6)],
    ])
    assert sorted(path.name for path in parts.iterdir()) == ["encoder.tar.part00", "generator.tar.part00"]
    for name in ("demo-generator", "demo-encoder"):  # the unpacked finished encoder run installs G and itself
        unpacked, _ = load_safetensors(other / "weights" / WEIGHT_FILES[name].filename)
        installed, _ = load_safetensors(work / "weights" / WEIGHT_FILES[name].filename)
        assert unpacked.keys() == installed.keys()
        assert all(torch.equal(unpacked[key], installed[key]) for key in installed)
    assert [path.name for path in (other / "train-encoder").glob("checkpoints/*.pt")] == ["step-0000004.pt"]
    original = read_checkpoint(latest_checkpoint(RunDir(work / "train-generator")))
    run = RunDir(other / "train-generator")
    assert "resumed from" in output and "step-0000004.pt" in output
    assert read_summary_steps(run) == 6
    restored = read_checkpoint(run.checkpoint(4))
    for name, tensor in original["g_ema"].items():  # weights travel in fp16, back in fp32
        assert restored["g_ema"][name].dtype == torch.float32
        torch.testing.assert_close(restored["g_ema"][name], tensor, rtol=1e-3, atol=1e-4)
    assert restored["step"] == 4 and torch.equal(restored["ada_signs"], original["ada_signs"])


def read_summary_steps(run: RunDir) -> int:
    return json.loads(run.summary.read_text())["steps"]


def test_the_time_budget_stops_a_stage_with_a_checkpoint_to_continue_from(recipe, tmp_path):
    work = tmp_path / "budget"
    output = run_without_prefect([
        ["--work", str(work), "--stage", "world", *overrides("world", identities=1, clips_per_video=1)],
        ["--work", str(work), "--stage", "generator", "--minutes", "0.01", *overrides("generator", steps=50)]])
    assert "step 2 of 50; run the stage again to continue" in output
    assert latest_checkpoint(RunDir(work / "train-generator")).name == "step-0000002.pt"
    assert not (work / "weights" / WEIGHT_FILES["demo-generator"].filename).exists()


def test_the_world_store_holds_the_true_landmarks_and_the_preprocessing_crop_of_them():
    plan = plan_world(SynthConfig(**TINY_WORLD))[0]
    boxes, landmarks, batches = world_crops(plan)
    crops = np.concatenate(list(batches))
    frame_landmarks = true_landmarks(plan)
    # the crop square is the paper's: twice the landmarks' extent, centred a sixth of it above their box
    extent = (frame_landmarks.max(1) - frame_landmarks.min(1)).max(1)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 2 * extent, rtol=0.02)  # smoothed over time
    assert crops.shape == (plan.frames, 256, 256, 3)
    # in crop pixels the landmarks fill the middle half of the crop, as preprocess-dataset's do
    span = landmarks.max(1) - landmarks.min(1)
    assert np.all((span.max(1) > 120) & (span.max(1) < 136))


def test_a_rerun_of_the_world_skips_what_is_written(tmp_path):
    work = Work(tmp_path / "work")
    config = SynthConfig(**{**TINY_WORLD, "identities": 1, "clips_per_video": 1})
    first = write_world(work, config)
    stamp = (work.store / "clips").stat().st_mtime_ns
    again = write_world(work, config)
    assert (first["rendered"], again["rendered"]) == (1, 0) and first["frames"] == again["frames"] == 10
    assert (work.store / "clips").stat().st_mtime_ns == stamp and work.truth.is_file()


@pytest.mark.slow
def test_the_direct_world_crops_match_the_video_and_preprocessing_path(tmp_path):
    """Same world both ways. Measured on 3 people x 2 clips (150 frames): box corners 1.6 % of the crop side apart
    on average, 5.3 % at worst (dlib places the synthetic jaw line a few pixels off the true one), crops 4.8 grey
    levels apart on average, 8.2 at worst (that box difference, and the codec)."""
    from flows.make_synthetic_dataset import make_synthetic_dataset
    from flows.preprocess_dataset import preprocess_dataset
    from tasks.preprocess import PreprocessConfig

    config = SynthConfig(**TINY_WORLD)
    videos = make_synthetic_dataset(out=str(tmp_path / "videos"), config=config)
    preprocess_dataset(input=videos.out, store=str(tmp_path / "video.zarr"), config=PreprocessConfig(fps=25))
    work = Work(tmp_path / "direct")
    write_world(work, config)
    video_store, direct_store = (ClipStore.open(path, create=False) for path in (tmp_path / "video.zarr", work.store))
    assert video_store.clips() == direct_store.clips()
    offsets, differences = [], []
    for key in direct_store.clips():
        video, direct = video_store.clip(key), direct_store.clip(key)
        side = direct.boxes[:, 2] - direct.boxes[:, 0]
        offsets.append(np.abs(video.boxes[:] - direct.boxes[:]).max(1) / side)
        differences.append(np.abs(video.crops[:].astype(float) - direct.crops[:].astype(float)).mean(axis=(1, 2, 3)))
    offsets, differences = np.concatenate(offsets), np.concatenate(differences)
    assert offsets.mean() < 0.03 and offsets.max() < 0.08, offsets
    assert differences.mean() < 8 and differences.max() < 12, differences


# --- provenance ----------------------------------------------------------------------------------------------------

def absolute_paths(value) -> list[str]:
    """Strings in a JSON value that name a place on some machine (absolute, home-relative or drive paths)."""
    if isinstance(value, dict):
        return [found for item in value.values() for found in absolute_paths(item)]
    if isinstance(value, list):
        return [found for item in value for found in absolute_paths(item)]
    if isinstance(value, str) and (value.startswith(("/", "~", "\\")) or (len(value) > 2 and value[1:3] == ":\\")
                                   or any(place in value for place in ("/tmp/", "/work/", "/home/", "/root/"))):
        return [value]
    return []


def test_no_committed_provenance_names_a_path_of_the_machine_that_made_it():
    files = sorted(BUNDLED_DIR.rglob("provenance.json"))
    assert files, f"no provenance.json under {BUNDLED_DIR}"
    for path in files:
        found = absolute_paths(json.loads(path.read_text()))
        assert not found, f"{path.relative_to(PROJECT_ROOT)} holds machine paths: {found[:5]}"
    for path in sorted(BUNDLED_DIR.rglob("*.safetensors")):  # their metadata: the training config
        found = absolute_paths(read_safetensors_metadata(path))
        assert not found, f"{path.relative_to(PROJECT_ROOT)} holds machine paths: {found[:5]}"


def test_paths_inside_the_work_folder_and_the_checkout_become_symbols(tmp_path):
    places = {str(tmp_path / "work"): "<work>", "outputs/w": "<work>", str(PROJECT_ROOT): "<repo>"}
    record = {"store": str(tmp_path / "work" / "world.zarr"), "out": "outputs/w/train-g", "root": "outputs/w",
              "face3d": "synth-regressor", "nested": [{"file": str(PROJECT_ROOT / "models" / "x.safetensors")}],
              "elsewhere": "outputs/wider/x", "steps": 3}
    assert symbolic_paths(record, places) == {
        "store": "<work>/world.zarr", "out": "<work>/train-g", "root": "<work>", "face3d": "synth-regressor",
        "nested": [{"file": "<repo>/models/x.safetensors"}], "elsewhere": "outputs/wider/x", "steps": 3}
