"""Test-wide settings: Prefect runs for real (ephemeral API) with its state in a throwaway PREFECT_HOME."""

import os
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="reenact-prefect-")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from storage.settings import apply_prefect_defaults  # noqa: E402

apply_prefect_defaults()  # the project's other Prefect defaults, before any test module imports Prefect

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """The README's main job (`reenact demo`) run once: its folder (synthetic world, store, videos) and output."""
    from click.testing import CliRunner

    from flows.cli import app

    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="session")
def demo_evaluation(demo_run, tmp_path_factory) -> Path:
    """The evaluate flow on the demo's world with the bundled demo weights (people they never saw), both
    protocols, against the truth; LPIPS and FID run on random trunks (no weights can be downloaded), named by
    their registry files. Beside it, throughput.json: G + A frames/s measured here."""
    from flows.evaluate import evaluate
    from storage.store import ClipStore
    from tasks.evaluate import EvaluateConfig
    from tasks.metrics import MetricsConfig
    from tasks.reenact import ReenactConfig, networks_for, prepare_source
    from tests.weights import write_metric_weights

    world, _ = demo_run
    root = tmp_path_factory.mktemp("demo-evaluation")
    weights = str(write_metric_weights(root / "weights"))
    reenact = ReenactConfig(weights="demo", weights_dir=weights, device="cpu")
    config = EvaluateConfig(
        store=str(world / "synthetic.zarr"), out=str(root / "evaluation"), truth=str(world / "synthetic" / "truth.parquet"),
        max_clips=None, cross_count=6, frames_per_clip=4, samples=2, sample_frames=2, linearity_sources=2,
        reenact=reenact, metrics=MetricsConfig(identity="dlib", weights_dir=weights, device="cpu", kid_subsets=10))
    evaluate(config=config)
    networks, store = networks_for(reenact), ClipStore.open(config.store, create=False)
    source = prepare_source(f"clip:{store.clips()[0]}", 0, reenact, networks, store)
    started, frames = time.perf_counter(), 16
    for _ in range(frames):
        networks.generate(source, source.params[None])
    (Path(config.out) / "throughput.json").write_text(json.dumps([
        {"module": "G + A (demo set)", "device": "cpu", "batch_size": 1,
         "frames_per_second": frames / (time.perf_counter() - started)}]))
    return Path(config.out)



# The default tier stays quick: a test that needs one of these runs the full-size official networks, the README's
# whole main job or a real server (minutes on 2 cores), so it belongs to the slow tier (CI runs every tier).
SLOW_FIXTURES = {"official_weights", "demo_run", "demo_evaluation", "prefect_server"}


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
