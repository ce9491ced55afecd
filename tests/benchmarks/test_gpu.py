"""benchmarks/gpu.py runs with torch and this repository alone: in a subprocess where Prefect, PyAV, OpenCV, SciPy,
pandas and our Prefect layers (tasks/, flows/) cannot be imported, on the CPU with tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "benchmarks" / "gpu.py"
# what a bare CUDA machine does not have (torchvision it has, with its torch; the generator's path needs none)
BLOCKED = "prefect,av,tasks,flows,cv2,scipy,pandas,decord,dlib"

# runs the benchmark as a script on an interpreter where the blocked top-level packages look not installed: every
# import finder answers "not here" for them (so `import x` raises ModuleNotFoundError and importlib.util.find_spec
# returns None, as on a machine without them)
WRAPPER = """
import runpy, sys
blocked = set(sys.argv[1].split(","))

class Without:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)

sys.meta_path[:] = [Without(finder) for finder in sys.meta_path]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_benchmark(blocked: str, *arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRAPPER, blocked, str(BENCHMARK), *arguments], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_the_blocker_blocks():
    result = run_benchmark("torch", "--requirements")
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr


def test_every_stage_imports_without_prefect_or_pyav_and_the_wheels_it_needs_are_listed():
    result = run_benchmark(BLOCKED, "--requirements")
    assert result.returncode == 0, result.stderr
    wheels = {line.split("==")[0].lower().replace("_", "-") for line in result.stdout.split()}
    assert {"pydantic", "pydantic-core", "zarr", "numcodecs", "safetensors", "pyyaml"} <= wheels
    assert not wheels & {"torch", "numpy", "prefect", "av", "opencv-python-headless", "scipy", "face-reenact"}


@pytest.mark.slow
def test_a_tiny_run_measures_g_and_a_and_a_training_stage(tmp_path):
    out = tmp_path / "gpu.json"
    result = run_benchmark(BLOCKED + ",torchvision", "--smoke", "--device", "cpu", "--out", str(out),
                           "--sections", "inference,train", "--stages", "generator",
                           "--variants", "fp32 eager,bf16 fast NHWC")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["environment"]["device"] == "cpu" and data["skipped"] == []
    rows = {(row["variant"], row["batch"]): row for row in data["sections"]["inference"]}
    assert set(rows) == {(variant, batch) for variant in ("fp32 eager", "bf16 fast NHWC") for batch in (1, 2)}
    assert all(row["frames_per_s"] > 0 for row in rows.values())
    assert rows[("fp32 eager", 2)]["ratio_to_fp32_eager"] == 1.0
    fast = rows[("bf16 fast NHWC", 2)]
    assert fast["ratio_to_fp32_eager"] > 0 and fast["codes"] == 4
    assert fast["psnr_db"] >= 35 and fast["mad"] <= 0.02  # the stated bf16 tolerance, on the tiny G
    (train,) = data["sections"]["train"]
    assert train["stage"] == "generator" and train["images_per_s"] > 0 and 0 <= train["data_wait"] <= 1
    assert "| generator | 32 | fp32 |" in result.stdout  # the printed table


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_section_and_stage_runs_tiny(tmp_path):
    out = tmp_path / "gpu.json"
    result = run_benchmark(BLOCKED, "--smoke", "--device", "cpu", "--out", str(out), "--train-precisions", "fp32,bf16",
                           "--profile-stages", "generator,encoder,directions,feature_transformer", timeout=1700)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    sections = data["sections"]
    assert set(sections) == {"inference", "transformer", "tune", "train", "profile", "compile"}
    assert {row["stage"] for row in sections["train"]} == {"generator", "encoder", "directions", "feature_transformer"}
    assert {(row["precision"], row["fast_ops"]) for row in sections["train"] if row["stage"] == "generator"} == {
        ("fp32", "off"), ("bf16", "off"), ("bf16", "folded")}
    assert all(row["images_per_s"] > 0 for row in sections["train"])
    assert all(row["ms_per_step"] > 0 for row in sections["tune"])
    assert all(row["ratio"] > 0 for row in sections["transformer"])
    compiled = [row for row in sections["compile"] if row["variant"] != "fp32 eager"]
    assert compiled and all(row["psnr_db"] >= 35 for row in compiled)
    for stage in ("generator", "encoder", "directions", "feature_transformer"):
        assert (tmp_path / f"gpu-profile-{stage}-32-fp32.txt").is_file()
    assert all(row["host_reads_per_step"] >= 0 for row in sections["profile"])
