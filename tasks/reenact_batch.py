"""Reenactment of many pairs into one folder: a video and a done-record per pair, and a manifest row.

    <out>/videos/<name>.mp4     the reenacted video
    <out>/videos/<name>.json    written after the video: the settings' hash, what the inputs were (their bytes'
                                sha256, or the store clip's source hash and preprocessing hash) and the summary

A pair whose done-record matches the settings and inputs of this run is skipped, so a killed batch resumes where
it stopped and a changed setting redoes every pair; a pair that fails gets a `failed` row and the batch goes on.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ValidationError

from models import MissingWeightsError
from storage.files import atomic_path, sha256_file
from storage.manifest import finish_row
from storage.store import ClipKey, ClipStore
from storage.weights import UnknownWeightsError
from tasks.protocols import ReenactPair
from tasks.reenact import (CLIP_PREFIX, ReenactConfig, ReenactInputError, RenderedVideo, check_request,
                           networks_for, prepare_source, reenact)

log = logging.getLogger(__name__)

VIDEOS = "videos"
PAIR_COLUMNS = ["name", "status", "error", "mode", "source", "source_frame", "driving", "output", "frames", "fps",
                "frames_without_face", "config_hash", "seconds_total", "finished_at"]


class DoneRecord(BaseModel):
    """<out>/videos/<name>.json: what a pair's video was made from, and what `reenact` said of it."""

    inputs: dict
    summary: RenderedVideo


def reenact_pair(pair: ReenactPair, out: Path, config: ReenactConfig, store: ClipStore | None = None,
                 cache: bool = False) -> dict:
    """Reenact one pair unless its done-record matches; return its manifest row (input problems -> `failed`)."""
    started = time.perf_counter()
    video = out / VIDEOS / f"{pair.name}.mp4"
    record_path = video.with_suffix(".json")
    row = {**pair.model_dump(), "output": str(video), "config_hash": config.output_hash(), "error": None}
    try:
        networks = networks_for(config)
        inputs = {"driving": _fingerprint(pair.driving, store),
                  "source": _fingerprint(pair.source, store) if pair.source else None,
                  "source_frame": pair.source_frame, "mode": pair.mode, "config_hash": row["config_hash"],
                  "weights_sha256": networks.weights_sha256}
        done = _read_record(record_path)
        if video.is_file() and done is not None and done.inputs == inputs:
            row.update(frames=done.summary.frames, fps=done.summary.fps,
                       frames_without_face=done.summary.frames_without_face)
            return finish_row(row, "skipped", started)
        check_request(pair.source, pair.source_frame, pair.mode)
        source = None if pair.mode == "self" else networks.tuned(
            prepare_source(pair.source, pair.source_frame, config, networks, store, cache), config)
        summary = reenact(pair.driving, source, video, config, networks, store, cache)
        with atomic_path(record_path) as partial:
            partial.write_text(DoneRecord(inputs=inputs, summary=summary).model_dump_json(indent=1))
        row.update(frames=summary.frames, fps=summary.fps, frames_without_face=summary.frames_without_face)
        return finish_row(row, "ok", started)
    except (MissingWeightsError, UnknownWeightsError):
        raise  # a setup problem: stop the batch
    except (ReenactInputError, FileNotFoundError, OSError, KeyError) as err:
        row["error"] = str(err)
    except Exception as err:  # a bug or an unforeseen input: record it and let the batch go on
        log.error("reenacting %s failed:\n%s", pair.name, traceback.format_exc())
        row["error"] = f"internal error: {type(err).__name__}: {err}"
    return finish_row(row, "failed", started)


def _fingerprint(text: str, store: ClipStore | None) -> dict:
    """What an input is, by content: a file's sha256, or a store clip's source hash and preprocessing hash."""
    if text.startswith(CLIP_PREFIX):
        if store is None:
            raise ReenactInputError(f"{text} names a store clip: give the store too")
        key = ClipKey.parse(text[len(CLIP_PREFIX):])
        attrs = store.attrs(key) if store.has(key) else {}
        if not attrs:
            raise ReenactInputError(f"{text} is not in the store {store.root}")
        return {"clip": str(key), "source_sha256": attrs.get("source_sha256"), "config_hash": attrs.get("config_hash")}
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    return {"file": str(path.resolve()), "sha256": sha256_file(path)}


def _read_record(path: Path) -> DoneRecord | None:
    """The pair's done-record; None when there is none or it is not one this code wrote (the pair is redone)."""
    try:
        return DoneRecord.model_validate_json(path.read_text())
    except (FileNotFoundError, ValidationError):
        return None


@task(name="reenact-pair", cache_policy=NO_CACHE, task_run_name="reenact {pair.name}")
def reenact_pair_task(pair: ReenactPair, out: str, config: ReenactConfig, store: str | None, cache: bool) -> dict:
    """Prefect task around `reenact_pair`; takes paths so it can run in another process (Dask)."""
    clip_store = ClipStore.open(store, create=cache) if store else None
    return reenact_pair(pair, Path(out), config, clip_store, cache)
