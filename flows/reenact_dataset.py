"""`reenact-dataset`: reenact a list of (source, driving) pairs, or the paper's self / cross protocol over a store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, unmapped
from pydantic import Field

from storage.manifest import upsert_manifest
from storage.store import ClipStore
from tasks.progress import collect_rows
from tasks.protocols import ReenactPair, cross_pairs, read_pairs, self_pairs, write_pairs
from tasks.reenact import ReenactConfig, networks_for
from tasks.reenact_batch import PAIR_COLUMNS, reenact_pair_task
from flows.options import POSITIONAL
from flows.summary import ItemCounts, publish, shown
from tasks.runners import RunnerConfig

MANIFEST = "manifest.parquet"
PAIRS = "pairs.parquet"
MANIFEST_EVERY_S = 10.0


class ReenactDatasetSummary(ItemCounts):
    out: str
    manifest: str
    pairs_file: str
    pairs: int
    frames: int
    seconds: float

    def lines(self) -> list[str]:
        return [self.counts_line("pairs", self.frames, self.seconds),
                f"videos:   {shown(Path(self.out) / 'videos')}", f"manifest: {shown(self.manifest)}"]


def check(config: ReenactConfig, **_) -> None:
    """Setup problems, before any pair: the weights set is known and its files are there."""
    networks_for(config)


@flow(name="reenact-dataset", log_prints=True)
def reenact_dataset(
    out: str = Field("outputs/reenacted", description="Folder for the videos (videos/<name>.mp4), pairs.parquet and manifest.parquet.", json_schema_extra=POSITIONAL),
    pairs: str | None = Field(None, description="A .csv/.parquet list of pairs: a 'driving' column, optional 'source', 'source_frame', 'mode' ('cross'/'self'), 'name'. Relative paths resolve against the list's folder."),
    store: str | None = Field(None, description="The clip store that --protocol draws from (and that clip: entries name)."),
    protocol: Literal["self", "cross"] | None = Field(None, description="Instead of --pairs: 'self' (every clip of --store drives its own first frame) or 'cross' (--count random pairs of two identities)."),
    count: int = Field(100, ge=1, description="Pairs of the cross protocol."),
    seed: int = Field(0, description="Seed of the cross protocol's draw."),
    config: ReenactConfig = ReenactConfig(),
    runner: RunnerConfig = RunnerConfig(),
    cache: bool = Field(False, description="Write inputs that --store lacks into it first (preprocess + encode)."),
    limit: int | None = Field(None, ge=1, description="Reenact only the first N pairs."),
) -> ReenactDatasetSummary:
    """Reenact many (source, driving) pairs: a list file, or the paper's self / cross protocol over a store.

    Every pair of the list file `pairs`, or of `protocol` over `store` (self: each clip drives its own
    first frame; cross: `count` random pairs of two identities, drawn with `seed`), into `out`.

    Pairs already done with the same settings and inputs are skipped, so a killed run resumes; a failing pair gets a
    'failed' row in the manifest and the others go on. The pair list is saved as pairs.parquet.
    """
    started = time.perf_counter()
    if (pairs is None) == (protocol is None):
        raise ValueError("give either a pair list (pairs) or a protocol over a store (protocol), not both")
    if protocol is not None and store is None:
        raise ValueError(f"the {protocol} protocol draws its pairs from a clip store: give the store")
    clip_store = ClipStore.open(store, create=cache) if store else None
    chosen = read_pairs(pairs) if pairs else (self_pairs(clip_store) if protocol == "self"
                                              else cross_pairs(clip_store, count, seed))
    chosen = chosen[:limit] if limit is not None else chosen
    if not chosen:
        raise ValueError(f"no pairs to reenact ({pairs or f'the {protocol} protocol over {store}'})")
    check(config)  # fail fast on a setup problem before any pair
    logger = get_run_logger()
    out_dir = Path(out)
    pairs_file = write_pairs(chosen, out_dir / PAIRS)
    manifest = out_dir / MANIFEST
    logger.info("reenacting %d pairs into %s with the %s weights", len(chosen), out_dir, config.weights)
    rows = _reenact_pairs.with_options(task_runner=runner.build())(chosen, str(out_dir), config, store, cache,
                                                                    str(manifest))
    _write_manifest(manifest, rows)
    for row in rows:
        if row["status"] == "failed":
            logger.warning("failed %s: %s", row["name"], row["error"])
    summary = ReenactDatasetSummary(out=str(out_dir), manifest=str(manifest), pairs_file=str(pairs_file),
                                    pairs=len(rows), seconds=time.perf_counter() - started,
                                    **ReenactDatasetSummary.tally(rows))
    publish(summary, "reenact-dataset", rows, ("name", "status", "frames", "output", "error"))
    return summary


@flow(name="reenact-pairs")
def _reenact_pairs(pairs: list[ReenactPair], out: str, config: ReenactConfig, store: str | None, cache: bool,
                   manifest: str) -> list[dict]:
    """Fan the pairs out on the chosen task runner; rewrite the manifest as results arrive."""
    futures = reenact_pair_task.map(pairs, out=unmapped(out), config=unmapped(config), store=unmapped(store),
                                    cache=unmapped(cache))
    return collect_rows(futures, "pairs", save=lambda rows: _write_manifest(Path(manifest), rows),
                        every_s=MANIFEST_EVERY_S)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    upsert_manifest(path, rows, key=["name"], columns=PAIR_COLUMNS)
