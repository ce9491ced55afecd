"""The manifest: one parquet row per clip, beside the store, saying what happened to it and how long it took."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from storage.files import atomic_path

KEY = ["identity", "video", "clip"]
STATUSES = ("ok", "failed", "skipped")

# Column order of the file; rows may carry more (they are kept, after these).
COLUMNS = KEY + [
    "status",
    "error",
    "source_path",
    "source_sha256",
    "frames",
    "fps",
    "source_frames",
    "source_fps",
    "width",
    "height",
    "has_audio",
    "faces_max",
    "frames_without_face",
    "config_hash",
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
    row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return row


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The manifest as a DataFrame (empty, with the standard columns, if there is none yet)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_parquet(path)


def upsert_manifest(path: str | os.PathLike, rows: Iterable[Mapping], key: list[str] = KEY,
                    columns: list[str] = COLUMNS) -> pd.DataFrame:
    """Replace the rows of the given items (matched on the `key` columns, by default identity/video/clip), keep the
    others, write atomically. Columns come in `columns` order, then any others the rows carry."""
    path = Path(path)
    new = pd.DataFrame(list(rows))
    if new.empty:
        return read_manifest(path)
    bad = set(new["status"]) - set(STATUSES)
    if bad:
        raise ValueError(f"unknown manifest status {sorted(bad)}; expected one of {STATUSES}")
    old = read_manifest(path)
    if not old.empty:
        replaced = old.set_index(key).index.isin(new.set_index(key).index)
        old = old[~replaced]
    merged = pd.concat([df for df in (old, new) if not df.empty], ignore_index=True)
    ordered = [c for c in columns if c in merged.columns] + [c for c in merged.columns if c not in columns]
    merged = merged[ordered].sort_values(key, ignore_index=True)
    with atomic_path(path) as partial:
        merged.to_parquet(partial, index=False)
    return merged
