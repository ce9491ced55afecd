"""`preprocess-dataset`: VoxCeleb-style videos -> aligned 256x256 face crops, landmarks and boxes in the clip store."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from pydantic import Field

from flows.summary import ItemCounts, publish, shown
from storage.inputs import discover
from storage.manifest import compact_manifest
from storage.store import ClipStore
from tasks.preprocess import PreprocessConfig, detector_for, preprocess_clip_task
from tasks.progress import collect_rows
from tasks.runners import RunnerConfig


class PreprocessSummary(ItemCounts):
    store: str
    manifest: str
    clips: int
    frames: int
    seconds: float

    def lines(self) -> list[str]:
        return [self.counts_line("clips", self.frames, self.seconds), f"store:    {shown(self.store)}",
                f"manifest: {shown(self.manifest)}"]


def check(input: str, config: PreprocessConfig, **_) -> None:
    """Setup problems, before any clip: the input is there, the detector is known and has its weights."""
    if not Path(input).exists():
        raise FileNotFoundError(f"no such input: {input}")
    detector_for(config)


@flow(name="preprocess-dataset", log_prints=True)
def preprocess_dataset(
    input: str = Field(description="A VoxCeleb-layout directory (<identity>/<video>/<clip>.mp4) or a .csv/.parquet list with a 'path' column."),
    store: str = Field("outputs/dataset.zarr", description="The Zarr clip store to create or extend."),
    config: PreprocessConfig = PreprocessConfig(),
    runner: RunnerConfig = RunnerConfig(),
    input_root: str | None = Field(None, description="Root that every listed path must stay inside (list files; default: the list's folder)."),
    limit: int | None = Field(None, ge=1, description="Process only the first N clips."),
) -> PreprocessSummary:
    """Decode videos, detect and align faces, and write 256x256 crops, landmarks and boxes to the clip store.

    Every clip under `input` (a VoxCeleb-layout directory, or a .csv/.parquet list of paths). Running it again
    skips clips whose source file and settings are unchanged and whose stored chunks are all there (a damaged
    clip is computed again); a killed run leaves no half-written clip, and several runs may write one store at
    once. A video with fewer readable frames than its container declares fails unless accept_truncated. The
    manifest gets one row per clip of this run (ok / failed / skipped) as each clip finishes, and keeps the rows
    of other clips.
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
    for row in rows:
        if row["status"] == "failed":
            logger.warning("failed %s/%s/%s: %s", row["identity"], row["video"], row["clip"], row["error"])
    summary = PreprocessSummary(store=str(clip_store.root), manifest=str(clip_store.manifest_path), clips=len(rows),
                                seconds=time.perf_counter() - started, **PreprocessSummary.tally(rows))
    publish(summary, "preprocess-dataset", rows, ("identity", "video", "clip", "name", "status", "frames", "fps",
                                                  "face_scale", "frames_without_face", "error"))
    return summary


@flow(name="preprocess-clips")
def _run_clips(sources, store_path: str, config: PreprocessConfig) -> list[dict]:
    """Fan the clips out on the chosen task runner (each task records its own manifest row as it finishes)."""
    futures = preprocess_clip_task.map(sources, store_path=unmapped(store_path), config=unmapped(config))
    return collect_rows(futures, "clips")
