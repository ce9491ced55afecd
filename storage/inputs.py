"""Where clips come from: a directory in VoxCeleb layout, or a CSV/parquet list of paths under a root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from storage.store import ClipKey

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


@dataclass(frozen=True)
class ClipSource:
    """One input clip. `error` is set when the entry is unusable before any decoding (bad path, outside the root)."""

    key: ClipKey
    path: Path
    error: str | None = None


def discover(input_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[ClipSource]:
    """Clips of a VoxCeleb-layout directory (`<identity>/<video>/<clip>.mp4`) or of a list file (.csv / .parquet).

    A list file has a `path` column (absolute, or relative to `root`, which defaults to the list file's folder) and
    optionally `identity`, `video`, `clip` columns; otherwise the key comes from the path's last three parts. Every
    path must resolve inside the root: `..` or a symlink that leads out of it makes that entry an error, not a read.
    """
    input_path = Path(input_path)
    if input_path.is_dir():
        return _scan_directory(input_path)
    if input_path.suffix.lower() in (".csv", ".parquet"):
        return _read_list(input_path, Path(root) if root else input_path.parent)
    if not input_path.exists():
        raise FileNotFoundError(f"input not found: {input_path}")
    raise ValueError(f"input must be a directory in VoxCeleb layout or a .csv/.parquet list, got {input_path}")


def _scan_directory(root: Path) -> list[ClipSource]:
    sources = []
    for path in sorted(root.glob("*/*/*")):
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        identity, video = path.parent.parent.name, path.parent.name
        sources.append(_checked(root, path, identity, video, path.stem))
    return sources


def _read_list(list_file: Path, root: Path) -> list[ClipSource]:
    table = pd.read_parquet(list_file) if list_file.suffix.lower() == ".parquet" else pd.read_csv(list_file)
    if "path" not in table.columns:
        raise ValueError(f"{list_file} needs a 'path' column (found {list(table.columns)})")
    sources = []
    for row in table.to_dict("records"):
        path = Path(str(row["path"]))
        path = path if path.is_absolute() else root / path
        parts = path.with_suffix("").parts[-3:]
        identity = str(row.get("identity") or parts[0])
        video = str(row.get("video") or parts[1])
        clip = str(row.get("clip") or parts[2])
        sources.append(_checked(root, path, identity, video, clip))
    return sources


def clip_key_for(path: str | os.PathLike) -> ClipKey:
    """The key a single video gets outside a dataset: its last three path parts (identity/video/clip when it sits
    in VoxCeleb layout), made safe for a key."""
    parts = [safe_name(part) for part in Path(path).with_suffix("").parts[-3:]]
    return ClipKey(*(["single"] * (3 - len(parts)) + parts))


def _checked(root: Path, path: Path, identity: str, video: str, clip: str) -> ClipSource:
    try:
        key = ClipKey(identity, video, clip)
    except ValueError as err:
        key = ClipKey("invalid", "invalid", safe_name(f"{identity}_{video}_{clip}"))
        return ClipSource(key, path, str(err))
    real_root = root.resolve()
    real = path.resolve()
    if not real.is_relative_to(real_root):
        return ClipSource(key, path, f"path leads outside the input root {real_root} (resolves to {real})")
    return ClipSource(key, real)


def safe_name(text: str) -> str:
    """`text` as a key part or file name: ASCII letters, digits, '_', '-' and '.' (others become '_')."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_-." else "_" for c in text).lstrip("._-") or "unnamed"
