"""`encode-dataset`: the store's crops -> 3DMM parameters (face3d) and W+ inversions per clip, plus the ranges table."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from pydantic import Field

from storage.manifest import upsert_manifest
from storage.store import ClipKey, ClipStore
from tasks.encode import FACE3D, EncodeConfig, encode_clip_task, encoders_for, measure_ranges_task
from tasks.progress import collect_rows
from flows.options import POSITIONAL
from flows.summary import ItemCounts, publish, shown
from tasks.runners import RunnerConfig

MANIFEST = "manifest-encode.parquet"  # beside preprocessing's manifest.parquet, one row per clip as well
MANIFEST_EVERY_S = 10.0


class EncodeSummary(ItemCounts):
    store: str
    manifest: str
    ranges: str | None
    clips: int
    frames: int
    seconds: float

    def lines(self) -> list[str]:
        lines = [self.counts_line("clips", self.frames, self.seconds), f"store:    {shown(self.store)}",
                 f"manifest: {shown(self.manifest)}"]
        return lines + ([f"ranges:   {shown(self.ranges)}"] if self.ranges else [])


def check(store: str, config: EncodeConfig, **_) -> None:
    """Setup problems, before any clip: the store is there, the backends are known and have their weights."""
    ClipStore.open(store, create=False)
    encoders_for(config)


@flow(name="encode-dataset", log_prints=True)
def encode_dataset(
    store: str = Field("outputs/dataset.zarr", description="A clip store written by preprocess-dataset.", json_schema_extra=POSITIONAL),
    config: EncodeConfig = EncodeConfig(),
    runner: RunnerConfig = RunnerConfig(),
    clips: list[str] | None = Field(None, description="Only these clips (identity/video/clip); default: every clip.", json_schema_extra={"option": "clip"}),
    measure_ranges: bool = Field(True, description="Measure the [min, max] table of the face3d parameters over the store (ranges-<backend>.npy).", json_schema_extra={"option": "ranges"}),
) -> EncodeSummary:
    """Add 3DMM parameters (face3d/) and W+ inversions (inversion/) to every clip of a store, batched, on the GPU
    when there is one.

    Every published clip of `store`, or the listed `identity/video/clip` keys. Stages already written with the same settings are skipped. With face3d among the stages and `measure_ranges`,
    the [min, max] table of the backend's parameters over the whole store is (re)written as ranges-<backend>.npy.
    """
    started = time.perf_counter()
    clip_store = ClipStore.open(store, create=False)
    keys = [ClipKey.parse(text) for text in clips] if clips else clip_store.clips()
    missing = [str(key) for key in keys if not clip_store.has(key)]
    if missing:
        raise KeyError(f"not in the store {clip_store.root}: {', '.join(missing)}")
    encoders_for(config)  # fail fast on a setup problem (unknown backend, missing weights) before any clip
    cleaned = clip_store.clean_staging()
    logger = get_run_logger()
    logger.info("encoding %d clips of %s: stages %s, face3d %s, encoder %s%s", len(keys), clip_store.root,
                ",".join(config.stages), config.face3d, config.encoder,
                f" (removed {cleaned} leftovers of an interrupted run)" if cleaned else "")
    manifest = clip_store.root / MANIFEST
    rows = _encode_clips.with_options(task_runner=runner.build())(keys, str(clip_store.root), config, str(manifest))
    upsert_manifest(manifest, rows)
    for row in rows:
        if row["status"] == "failed":
            logger.warning("failed %s/%s/%s: %s", row["identity"], row["video"], row["clip"], row["error"])
    ranges = None
    if measure_ranges and FACE3D in config.stages and any(row["status"] != "failed" for row in rows):
        ranges = measure_ranges_task(str(clip_store.root), config.face3d)
        logger.info("ranges of %s over the store: %s", config.face3d, ranges)
    summary = EncodeSummary(store=str(clip_store.root), manifest=str(manifest), ranges=ranges, clips=len(rows),
                            seconds=time.perf_counter() - started, **EncodeSummary.tally(rows))
    publish(summary, "encode-dataset", rows, ("identity", "video", "clip", "status", "frames", "error"))
    return summary


@flow(name="encode-clips")
def _encode_clips(keys: list[ClipKey], store_path: str, config: EncodeConfig, manifest: str) -> list[dict]:
    """Fan the clips out on the chosen task runner; rewrite the manifest as results arrive so a killed run keeps them."""
    futures = encode_clip_task.map(keys, store_path=unmapped(store_path), config=unmapped(config))
    return collect_rows(futures, "clips", save=lambda rows: upsert_manifest(Path(manifest), rows),
                        every_s=MANIFEST_EVERY_S)
