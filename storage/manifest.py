"""The manifest: one parquet row per clip, beside the store, saying what happened to it and how long it took.

Many writers, one manifest: a finished item appends its row as a small file of its own (`record_row`, a rename, no
lock), and the rows are merged into the parquet file under an exclusive lock on a lock file beside it
(`compact_manifest`: at the end of a run, and on every read), so no writer's rows are lost. The parquet file is
replaced atomically and read from one open handle, so a reader never sees a half-swapped file.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import uuid
from datetime import datetime, UTC
from pathlib import Path
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from storage.files import atomic_path, file_lock

KEY = ["identity", "video", "clip"]
STATUSES = ("ok", "failed", "skipped")

# Column order of the file; rows may carry more (they are kept, after these).
COLUMNS = KEY + [
    "status",
    "error",
    "name",
    "source_path",
    "source_sha256",
    "frames",
    "fps",
    "source_frames",
    "source_fps",
    "declared_frames",
    "readable_frames",
    "truncated",
    "decode_error",
    "width",
    "height",
    "has_audio",
    "faces_max",
    "frames_without_face",
    "config_hash",
    "config",
    "seconds_probe",
    "seconds_analyse",
    "seconds_write",
    "seconds_total",
    "finished_at",
]


def finish_row(row: dict, status: str, started: float) -> dict:
    """`row` marked with its status, the seconds since `started` (a `time.perf_counter()`) and the time it ended."""
    row["status"] = status
    row["seconds_total"] = time.perf_counter() - started
    row["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return row


def pending_dir(path: str | os.PathLike) -> Path:
    """Where rows wait to be merged into the manifest at `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.rows")


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def record_row(path: str | os.PathLike, row: Mapping) -> Path:
    """Append one item's row for the manifest at `path`: a small JSON file, written whole or not at all. Cheap enough
    to call as each item finishes; `compact_manifest` (or any read) merges it."""
    _check_status([row])
    folder = pending_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    with atomic_path(target) as partial:
        partial.write_text(json.dumps(dict(row), default=_plain))
    return target


def read_manifest(path: str | os.PathLike, key: list[str] = KEY, columns: list[str] = COLUMNS) -> pd.DataFrame:
    """The manifest as a DataFrame, with the rows still waiting merged in (and written, where the store is writable);
    empty, with the standard columns, if there is none yet."""
    path = Path(path)
    if _pending(path):
        try:
            return compact_manifest(path, key, columns)
        except OSError:  # a read-only store: merge in memory
            return _merge(_read(path), _load(_pending(path)), key, columns)
    frame = _read(path)
    return frame if frame is not None else pd.DataFrame(columns=columns)


def compact_manifest(path: str | os.PathLike, key: list[str] = KEY, columns: list[str] = COLUMNS) -> pd.DataFrame:
    """Merge the waiting rows into the manifest file (under its lock) and return the whole manifest."""
    return upsert_manifest(path, [], key, columns)


def upsert_manifest(path: str | os.PathLike, rows: Iterable[Mapping], key: list[str] = KEY,
                    columns: list[str] = COLUMNS) -> pd.DataFrame:
    """Replace the rows of the given items (matched on the `key` columns, by default identity/video/clip), keep the
    others, write atomically, under the manifest's lock. Rows waiting as files are merged first (they are older).
    Columns come in `columns` order, then any others the rows carry."""
    path = Path(path)
    rows = [dict(row) for row in rows]
    _check_status(rows)
    with file_lock(lock_path(path)):
        waiting = _pending(path)
        old = _read(path)
        if not rows and not waiting:
            return old if old is not None else pd.DataFrame(columns=columns)
        merged = _merge(old, _load(waiting) + rows, key, columns)
        with atomic_path(path) as partial:
            merged.to_parquet(partial, index=False)
        for file in waiting:
            file.unlink(missing_ok=True)
    return merged


def _check_status(rows: list[Mapping]) -> None:
    bad = {row.get("status") for row in rows} - set(STATUSES)
    if bad:
        raise ValueError(f"unknown manifest status {sorted(map(str, bad))}; expected one of {STATUSES}")


def _pending(path: Path) -> list[Path]:
    folder = pending_dir(path)
    return sorted(folder.glob("[0-9]*.json")) if folder.exists() else []  # names sort by the time they were written


def _load(files: list[Path]) -> list[dict]:
    rows = []
    for file in files:
        try:
            rows.append(json.loads(file.read_text()))
        except FileNotFoundError:
            continue  # merged by another process meanwhile
    return rows


def _read(path: Path) -> pd.DataFrame | None:
    """The manifest file, read through one handle: a concurrent atomic replace cannot mix two versions."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    return pd.read_parquet(io.BytesIO(data))


def _merge(old: pd.DataFrame | None, rows: list[dict], key: list[str], columns: list[str]) -> pd.DataFrame:
    new = pd.DataFrame(rows)
    if new.empty:
        return old if old is not None else pd.DataFrame(columns=columns)
    new = new.drop_duplicates(key, keep="last")
    if old is not None and not old.empty:
        old = old[~old.set_index(key).index.isin(new.set_index(key).index)]
    merged = pd.concat([df for df in (old, new) if df is not None and not df.empty], ignore_index=True)
    ordered = [c for c in columns if c in merged.columns] + [c for c in merged.columns if c not in columns]
    return merged[ordered].sort_values(key, ignore_index=True)


def _plain(value):
    """JSON for what rows carry besides plain values: numpy scalars, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to a manifest row")


def is_missing(value) -> bool:
    """A cell with nothing in it: None, NaN or pandas' NA (parquet gives NaN for an empty float or string cell)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)
