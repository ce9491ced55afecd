"""`store-verify`: every clip of a store checked against the checksums recorded when it was published; `repair`
heals what fails (tasks/verify.py)."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from pydantic import Field

from flows.summary import FlowSummary, publish
from storage.manifest import compact_manifest, read_manifest
from storage.store import ClipStore
from tasks.progress import progress
from tasks.runners import RunnerConfig
from tasks.verify import MISSING, ClipReport, repair_clip_task, verify_clips_task

CLIPS_PER_TASK = 32  # a check takes milliseconds a clip: tasks of several clips keep Prefect's overhead small


class StoreVerifySummary(FlowSummary):
    store: str
    clips: int
    whole: int
    damaged: list[ClipReport]
    repaired: int
    unreferenced_versions: int
    removed_versions: bool
    seconds: float

    def lines(self) -> list[str]:
        lines = []
        for report in self.damaged:
            lines.append(f"{report.key}: {'; '.join(report.problems[:5])}"
                         f"{f' (and {len(report.problems) - 5} more)' if len(report.problems) > 5 else ''}")
            if report.action:
                lines.append(f"    -> {report.action}")
        lines.append(f"{self.clips} clips checked in {self.seconds:.1f} s: {self.whole} whole, {len(self.damaged)} "
                     f"damaged or missing, {self.repaired} repaired")
        if self.unreferenced_versions:
            lines.append(f"{self.unreferenced_versions} clip versions no clip uses (left by killed writers): "
                         f"{'removed' if self.removed_versions else '--repair removes them'}")
        return lines

    @property
    def exit_code(self) -> int:
        return 1 if len(self.damaged) > self.repaired else 0


@flow(name="store-verify", log_prints=True)
def store_verify(
    store: str = Field(description="A clip store written by preprocess-dataset."),
    repair: bool = Field(False, description="Preprocess damaged or missing clips again from their sources (with the config recorded in each); mark them failed when the source is gone; remove damaged stages and versions no clip uses."),
    quick: bool = Field(False, description="Only check that every chunk file is there at its published size (what preprocess-dataset checks before skipping a clip), without reading the bytes."),
    runner: RunnerConfig = RunnerConfig(),
) -> StoreVerifySummary:
    """Check every clip of a store against the checksums recorded when it was published.

    Reports each clip that is incomplete, unreadable, or whose bytes changed (naming the array and chunk), and each
    clip the manifest lists as made that the store lacks; exits 1 while any damage remains. With `repair`, such
    clips are preprocessed again from their sources (or marked failed in the manifest when the source is gone),
    damaged stages are removed for encode-dataset to redo, and versions no clip uses any more (left by killed
    writers) are deleted."""
    full = not quick
    started = time.perf_counter()
    clip_store = ClipStore.open(store, create=False)
    keys = clip_store.clips()
    manifest = read_manifest(clip_store.manifest_path)
    made = {f"{r.identity}/{r.video}/{r.clip}" for r in manifest.itertuples() if r.status in ("ok", "skipped")}
    logger = get_run_logger()
    logger.info("checking %d clips of %s (%s)", len(keys), clip_store.root, "every byte" if full else "presence and sizes")
    reports = _check.with_options(task_runner=runner.build())(str(clip_store.root), [str(k) for k in keys], full)
    published = {str(k) for k in keys}
    reports += [ClipReport(key=name, problems=[MISSING]) for name in sorted(made - published)]
    reports.sort(key=lambda r: r.key)
    unreferenced = len(clip_store.unreferenced_versions())
    if repair and reports:
        reports = _repair.with_options(task_runner=runner.build())(str(clip_store.root), reports)
    if repair:
        clip_store.remove_unreferenced()
        compact_manifest(clip_store.manifest_path)
    for report in reports:
        logger.warning("%s: %s%s", report.key, "; ".join(report.problems[:3]),
                       f" -> {report.action}" if report.action else "")
    summary = StoreVerifySummary(store=str(clip_store.root), clips=len(keys),
                                 whole=len(keys) - sum(r.key in published for r in reports), damaged=reports,
                                 repaired=sum(r.repaired for r in reports), unreferenced_versions=unreferenced,
                                 removed_versions=repair, seconds=time.perf_counter() - started)
    publish(summary, "store-verify", [{"clip": r.key, "problems": "; ".join(r.problems), "action": r.action}
                                      for r in reports], ("clip", "problems", "action"))
    return summary


@flow(name="store-verify-clips")
def _check(store_path: str, keys: list[str], full: bool) -> list[ClipReport]:
    batches = [keys[i : i + CLIPS_PER_TASK] for i in range(0, len(keys), CLIPS_PER_TASK)]
    futures = [verify_clips_task.submit(store_path, batch, full, count=len(batch) - 1) for batch in batches]
    reports: list[ClipReport] = []
    with progress(total=len(futures), description="clip batches") as advance:
        for future in as_completed(futures):
            found = future.result()
            reports += found
            advance("damaged" if found else "whole")
    return reports


@flow(name="store-verify-repair")
def _repair(store_path: str, reports: list[ClipReport]) -> list[ClipReport]:
    futures = [repair_clip_task.submit(store_path, report) for report in reports]
    repaired = []
    with progress(total=len(futures), description="repairs") as advance:
        for future in as_completed(futures):
            report = future.result()
            repaired.append(report)
            advance("repaired" if report.repaired else "not repaired")
    return sorted(repaired, key=lambda r: r.key)
