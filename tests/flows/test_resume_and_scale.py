"""A real run killed mid-way and resumed; the Dask runner with two workers; a deployment run through a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from storage.manifest import read_manifest
from storage.store import ClipStore
from storage.video import probe
from tests.flows.conftest import BIN, ROOT, stop
from tests.media import DEMO_VIDEOS

DEMO_CLIPS = 5


def _reenact(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])  # this checkout's code
    return subprocess.Popen([str(BIN / "reenact"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def _assert_complete(store: ClipStore) -> None:
    """Every published clip is whole: all arrays present, lengths agree with its attributes, no staging leftovers."""
    for key in store.clips():
        clip = store.clip(key)
        frames = clip.attrs["frames"]
        assert {"crops", "landmarks", "boxes", "has_face", "faces"} <= set(clip.arrays)
        assert len(clip) == frames == clip.landmarks.shape[0] == clip.boxes.shape[0]
        assert clip.frames(frames - 1, frames).any()  # the last chunk was written


@pytest.mark.slow
def test_killed_run_resumes_without_half_written_or_duplicate_clips(tmp_path):
    store_path = tmp_path / "d.zarr"
    run = _reenact("preprocess-dataset", str(DEMO_VIDEOS), "--store", str(store_path), "--fps", "25")
    clips_dir = store_path / "clips"
    deadline = time.monotonic() + 240
    while not list(clips_dir.glob("*/*/*/zarr.json")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the whole process group, as an OOM killer or a power cut would
    run.wait()
    store = ClipStore.open(store_path)
    done_before = store.clips()
    assert 1 <= len(done_before) < DEMO_CLIPS, "the kill should land mid-run"
    _assert_complete(store)

    rerun = _reenact("preprocess-dataset", str(DEMO_VIDEOS), "--store", str(store_path), "--fps", "25")
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert len(store.clips()) == DEMO_CLIPS
    _assert_complete(store)
    manifest = read_manifest(store.manifest_path)
    assert len(manifest) == DEMO_CLIPS and not manifest.duplicated(["identity", "video", "clip"]).any()
    skipped = {(r.identity, r.video, r.clip) for r in manifest.itertuples() if r.status == "skipped"}
    assert skipped == {(k.identity, k.video, k.clip) for k in done_before}
    assert set(manifest["status"]) <= {"ok", "skipped"}
    assert not (store.root / ".staging").exists() or not any((store.root / ".staging").iterdir())


@pytest.mark.slow
def test_manifest_has_a_row_for_every_clip_published_before_a_kill(tmp_path):
    store_path = tmp_path / "d.zarr"
    run = _reenact("preprocess-dataset", str(DEMO_VIDEOS), "--store", str(store_path), "--fps", "25")
    deadline = time.monotonic() + 400
    while len(list((store_path / "clips").glob("*/*/*/zarr.json"))) < 3 and time.monotonic() < deadline:
        assert run.poll() is None, run.stdout.read()
        time.sleep(0.05)
    published = ClipStore.open(store_path).clips()
    time.sleep(1.0)  # a clip's row follows its publishing by milliseconds
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert 3 <= len(published) < DEMO_CLIPS, "the kill should land mid-run"
    manifest = read_manifest(store_path / "manifest.parquet")  # merges the rows the killed run left as files
    rows = {(r.identity, r.video, r.clip): r.status for r in manifest.itertuples()}
    assert all(rows.get((k.identity, k.video, k.clip)) == "ok" for k in published), (published, rows)


def _demo_listing(path: Path, numbers: list[int]) -> Path:
    clips = sorted(p.relative_to(DEMO_VIDEOS).as_posix() for p in DEMO_VIDEOS.glob("*/*/*.mp4"))
    path.write_text("path\n" + "".join(f"{clips[n]}\n" for n in numbers))
    return path


def _contents(store: ClipStore, key) -> dict:
    clip = store.clip(key)
    return {"arrays": {name: clip[name][:] for name in clip.arrays},
            "attrs": json.loads((store.clip_dir(key) / "zarr.json").read_text())["attributes"]}  # checksums included


@pytest.mark.slow
def test_three_concurrent_runs_on_one_store_match_one_run_byte_for_byte(tmp_path):
    store_path = tmp_path / "shared.zarr"
    runs = [
        _reenact("preprocess-dataset", str(DEMO_VIDEOS), "--store", str(store_path), "--fps", "25"),
        _reenact("preprocess-dataset", str(_demo_listing(tmp_path / "first.csv", [0, 1, 2])), "--store",
                 str(store_path), "--fps", "25", "--input-root", str(DEMO_VIDEOS)),
        _reenact("preprocess-dataset", str(_demo_listing(tmp_path / "last.csv", [4, 3, 2])), "--store",
                 str(store_path), "--fps", "25", "--input-root", str(DEMO_VIDEOS)),
    ]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    baseline_path = tmp_path / "baseline.zarr"
    single = _reenact("preprocess-dataset", str(DEMO_VIDEOS), "--store", str(baseline_path), "--fps", "25")
    output, _ = single.communicate(timeout=600)
    assert single.returncode == 0, output

    shared, baseline = ClipStore.open(store_path), ClipStore.open(baseline_path)
    assert shared.clips() == baseline.clips() and len(shared.clips()) == DEMO_CLIPS  # nothing missing
    for key in baseline.clips():
        ours, theirs = _contents(shared, key), _contents(baseline, key)
        assert ours["attrs"] == theirs["attrs"], key
        for name, array in theirs["arrays"].items():
            assert ours["arrays"][name].dtype == array.dtype and np.array_equal(ours["arrays"][name], array), (key, name)
        assert shared.check(key, full=True) == []
    manifest = read_manifest(shared.manifest_path)
    assert len(manifest) == DEMO_CLIPS and not manifest.duplicated(["identity", "video", "clip"]).any()
    assert set(manifest["status"]) <= {"ok", "skipped"}
    assert not any(p.is_dir() for p in (shared.root / ".staging").iterdir())  # every run's staging published
    assert shared.unreferenced_versions(older_than_s=0) == []  # every version is a clip's or marked replaced


@pytest.mark.slow
@pytest.mark.server
def test_dask_runner_with_two_workers(tmp_path, prefect_server):
    store_path = tmp_path / "d.zarr"
    run = _reenact("preprocess-dataset", str(DEMO_VIDEOS), "--store", str(store_path), "--fps", "25",
                   "--task-runner", "dask", "--workers", "2", env=prefect_server)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    store = ClipStore.open(store_path)
    assert len(store.clips()) == DEMO_CLIPS
    _assert_complete(store)
    assert set(read_manifest(store.manifest_path)["status"]) == {"ok"}
    reference = _single_clip_reference(tmp_path, store)
    assert np.array_equal(reference, store.clip(store.clips()[0]).frames())


def _single_clip_reference(tmp_path: Path, store: ClipStore) -> np.ndarray:
    """The same clip processed in this process: the Dask workers must have written identical crops."""
    from flows.preprocess_dataset import preprocess_dataset
    from tasks.preprocess import PreprocessConfig

    key = store.clips()[0]
    listing = tmp_path / "one.csv"
    listing.write_text(f"path\n{key.path}.mp4\n")
    local = tmp_path / "local.zarr"
    preprocess_dataset(input=str(listing), store=str(local), config=PreprocessConfig(fps=25), input_root=str(DEMO_VIDEOS))
    return ClipStore.open(local).clip(key).frames()


@pytest.mark.slow
@pytest.mark.server
def test_deployment_runs_through_a_real_server(tmp_path, prefect_server, official_weights):
    env = prefect_server
    prefect = str(BIN / "prefect")

    def cli(*args: str, timeout: float = 300, code: int = 0) -> str:
        done = subprocess.run([prefect, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == code, f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    cli("work-pool", "create", "local-process", "--type", "process", "--overwrite")
    cli("--no-prompt", "deploy", "--all")
    worker = subprocess.Popen([prefect, "worker", "start", "--pool", "local-process"], env=env, cwd=ROOT,
                              stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        store_path = tmp_path / "d.zarr"
        out = cli("deployment", "run", "preprocess-dataset/nightly", "--param", f"store={store_path}",
                  "--param", "limit=2", "--watch", "--watch-timeout", "400", timeout=500)
        assert "Completed" in out, out
        video = tmp_path / "reenacted.mp4"
        config = json.dumps({"weights_dir": str(official_weights), "face3d": "landmark-fit"})
        out = cli("deployment", "run", "reenact-video/on-demand", "--param", f"output={video}",
                  "--param", f"config={config}", "--watch", "--watch-timeout", "400", timeout=500)
        assert "Completed" in out, out
        # a user's mistake: the watcher shows the reason in one line, and the run's state message holds it
        missing = tmp_path / "no-such-driver.mp4"
        out = cli("deployment", "run", "reenact-video/on-demand", "--param", f"driving={missing}",
                  "--param", f"output={tmp_path / 'never.mp4'}", "--param", f"config={config}", "--watch",
                  "--watch-timeout", "400", timeout=500, code=1)
        assert "Failed" in out and str(missing) in " ".join(out.split()), out
        assert "Traceback" not in out, out  # the engine's traceback of a user error stays out of the run's logs
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
        with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", timeout=10) as reply:
            state = json.loads(reply.read())["state"]
        assert state["type"] == "FAILED" and str(missing) in state["message"], state
        assert not (tmp_path / "never.mp4").exists()
    finally:
        stop(worker)
    store = ClipStore.open(store_path)
    assert len(store.clips()) == 2
    _assert_complete(store)
    assert set(read_manifest(store.manifest_path)["status"]) == {"ok"}
    demo_clip = probe(DEMO_VIDEOS / "id00001" / "astronaut01" / "00001.mp4")
    reenacted = probe(video)  # the deployment's default driving clip, at its own rate, with its audio
    assert (reenacted.frames, reenacted.fps, reenacted.has_audio) == (demo_clip.frames, demo_clip.fps, True)
