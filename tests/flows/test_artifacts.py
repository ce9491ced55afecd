"""What a finished run shows in Prefect's UI, read back through a real server's API: the summary, the per-item table,
the link to what it wrote, and progress artifacts that moved to 100 %."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from storage.store import ClipStore
from tests.flows.conftest import ROOT

READ_ARTIFACTS = """
import asyncio, json
from prefect.client.orchestration import get_client

async def main():
    async with get_client() as client:
        artifacts = await client.read_artifacts()
        print(json.dumps([{"key": a.key, "type": a.type, "data": a.data} for a in artifacts]))

asyncio.run(main())
"""


def _cli(env, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"reenact {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.server
def test_preprocess_reenact_and_evaluate_show_their_results_in_the_ui(tmp_path, prefect_server):
    env = {**prefect_server, "PYTHONPATH": str(ROOT)}
    world, store = tmp_path / "world", tmp_path / "s.zarr"
    _cli(env, "make-synthetic-dataset", str(world), "--identities", "2", "--videos", "1", "--clips", "1",
         "--min-seconds", "0.5", "--max-seconds", "0.5", "--seed", "3")
    _cli(env, "preprocess-dataset", str(world), "--store", str(store), "--fps", "25")
    first, second = ClipStore.open(store, create=False).clips()
    video = tmp_path / "v.mp4"
    _cli(env, "reenact-video", f"clip:{first}", "--source", f"clip:{second}", "--store", str(store), "--weights",
         "demo", "-o", str(video))
    _cli(env, "evaluate", "--store", str(store), "--out", str(tmp_path / "evaluation"), "--weights", "demo",
         "--protocol", "cross", "--cross-count", "1", "--frames-per-clip", "2", "--no-fid", "--no-linearity",
         "--embedder", "dlib", "--samples", "0")

    read = subprocess.run([sys.executable, "-c", READ_ARTIFACTS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    artifacts = json.loads(read.stdout)
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    for key in ("preprocess-dataset", "preprocess-dataset-items", "reenact-video", "reenact-video-items",
                "reenact-video-link", "evaluate", "evaluate-items", "make-synthetic-dataset"):
        assert key in by_key, sorted(by_key)
    assert "2 clips: 2 ok, 0 skipped, 0 failed" in by_key["preprocess-dataset"]["data"]
    clips = json.loads(by_key["preprocess-dataset-items"]["data"])
    assert sorted(row["clip"] for row in clips) == sorted(key.clip for key in (first, second))
    assert {row["status"] for row in clips} == {"ok"}
    assert by_key["reenact-video-link"]["data"] == f"[v.mp4]({video.resolve().as_uri()})"
    stages = {row["stage"] for row in json.loads(by_key["reenact-video-items"]["data"])}
    assert {"generate", "encode"} <= stages
    (cross,) = json.loads(by_key["evaluate-items"]["data"])
    assert cross["protocol"] == "cross" and cross["pairs"] == 1 and cross["csim"] is not None
    progress = [a for a in artifacts if a["type"] == "progress"]
    assert progress and all(float(a["data"]) == 100.0 for a in progress)
