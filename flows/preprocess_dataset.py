"""`preprocess-dataset`: VoxCeleb-style videos -> aligned 256x256 face crops, landmarks and boxes in the clip store."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, unmapped
from pydantic import BaseModel

import tasks  # noqa: F401
from storage.inputs import discover
from storage.manifest import compact_manifest
from storage.store import ClipStore
from tasks.preprocess import PreprocessConfig, detector_for, preprocess_clip_task
from tasks.progress import collect_rows
from tasks.runners import RunnerConfig


class PreprocessSummary(BaseModel):
    store: str
    manifest: str
    clips: int
    ok: int
    skipped: int
    failed: int
    frames: int
    seconds: float


@flow(name="preprocess-dataset", log_prints=True)
def preprocess_dataset(
    input: str,
    store: str = "outputs/dataset.zarr",
    config: PreprocessConfig = PreprocessConfig(),
    runner: RunnerConfig = RunnerConfig(),
    input_root: str | None = None,
    limit: int | None = None,
) -> PreprocessSummary:
    """Preprocess every clip under `input` (VoxCeleb-layout directory, or a .csv/.parquet list of paths).

    Clips already in the store with the same source hash and config hash are skipped when they pass the store's
    cheap check (a damaged one is computed again); the manifest gets one row per clip of this run (ok / failed /
    skipped), each as the clip finishes, and keeps the rows of other clips. Other runs may write the same store
    at the same time.
    """
    started = time.perf_counter()
    sources = discover(input, input_root)[:limit]
    detector_for(config)  # fail fast on a setup problem (unknown detector, missing weights) before any clip
    clip_store = ClipStore.open(store)
    cleaned = clip_store.clean_staging()  # only what no live writer owns
    logger = get_run_logger()
    logger.info("%d clips from %s -> %s%s", len(sources), input, clip_store.root,
                f" (removed {cleaned} leftovers of interrupted runs)" if cleaned else "")
    rows = _run_clips.with_options(task_runner=runner.build())(sources, str(clip_store.root), config)
    compact_manifest(clip_store.manifest_path)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "skipped", "failed")}
    for row in rows:
        if row["status"] == "failed":
            logger.warning("failed %s/%s/%s: %s", row["identity"], row["video"], row["clip"], row["error"])
    summary = PreprocessSummary(
        store=str(clip_store.root), manifest=str(clip_store.manifest_path), clips=len(rows),
        frames=int(sum(r.get("frames") or 0 for r in rows if r["status"] != "failed")),
        seconds=time.perf_counter() - started, **counts,
    )
    logger.info("done: %s", summary.model_dump_json())
    return summary


@flow(name="preprocess-clips")
def _run_clips(sources, store_path: str, config: PreprocessConfig) -> list[dict]:
    """Fan the clips out on the chosen task runner (each task records its own manifest row as it finishes)."""
    futures = preprocess_clip_task.map(sources, store_path=unmapped(store_path), config=unmapped(config))
    return collect_rows(futures, "clips")
