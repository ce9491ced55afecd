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
    """One input clip. `error` is set when the entry is unusable before any decoding (bad path, outside the root, a
    key that several files claim). `names` are the identity, video and clip as the input named them (the key holds
    their encoded form)."""

    key: ClipKey
    path: Path
    error: str | None = None
    names: tuple[str, str, str] | None = None

    @property
    def name(self) -> str:
        """identity/video/clip as the input named them."""
        return "/".join(self.names) if self.names else str(self.key)


def discover(input_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[ClipSource]:
    """Clips of a VoxCeleb-layout directory (`<identity>/<video>/<clip>.mp4`) or of a list file (.csv / .parquet).

    A list file has a `path` column (absolute, or relative to `root`, which defaults to the list file's folder) and
    optionally `identity`, `video`, `clip` columns; otherwise the key comes from the path's last three parts. Every
    path must resolve inside the root: `..` or a symlink that leads out of it makes that entry an error, not a read.
    Names may hold any character (the key encodes them, see `storage.store.encode_name`). One key claimed by several
    files is an error for that key (one entry, naming the files), never one file overwriting another's clip.
    """
    input_path = Path(input_path)
    if input_path.is_dir():
        return _one_per_key(_scan_directory(input_path))
    if input_path.suffix.lower() in (".csv", ".parquet"):
        return _one_per_key(_read_list(input_path, Path(root) if root else input_path.parent))
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
    # every cell as text: a clip named 00001 stays 00001, and an empty cell stays empty (not NaN)
    table = (pd.read_parquet(list_file) if list_file.suffix.lower() == ".parquet"
             else pd.read_csv(list_file, dtype=str, keep_default_na=False))
    if "path" not in table.columns:
        raise ValueError(f"{list_file} needs a 'path' column (found {list(table.columns)})")
    sources = []
    for row in table.to_dict("records"):
        path = Path(str(row["path"]))
        path = path if path.is_absolute() else root / path
        parts = ["single"] * 3 + list(path.with_suffix("").parts)
        names = [_cell(row.get(column)) or part for column, part in zip(("identity", "video", "clip"), parts[-3:])]
        sources.append(_checked(root, path, *names))
    return sources


def _cell(value) -> str | None:
    """A list cell's text; None for an empty cell (pandas reads those as NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value).strip() or None


def clip_key_for(path: str | os.PathLike) -> ClipKey:
    """The key a single video gets outside a dataset: its last three path parts (identity/video/clip when it sits
    in VoxCeleb layout), encoded for a key."""
    parts = list(Path(path).with_suffix("").parts[-3:])
    return ClipKey.from_names(*(["single"] * (3 - len(parts)) + parts))


def _checked(root: Path, path: Path, identity: str, video: str, clip: str) -> ClipSource:
    names = (identity, video, clip)
    key = ClipKey.from_names(*names)
    real_root = root.resolve()
    real = path.resolve()
    if not real.is_relative_to(real_root):
        return ClipSource(key, path, f"path leads outside the input root {real_root} (resolves to {real})", names)
    return ClipSource(key, real, names=names)


def _one_per_key(sources: list[ClipSource]) -> list[ClipSource]:
    """One entry per key, in input order: the same file listed twice counts once; a key claimed by different files
    becomes one entry whose error names them all."""
    claims: dict[ClipKey, list[ClipSource]] = {}
    for source in sources:
        claims.setdefault(source.key, []).append(source)
    result = []
    for key, group in claims.items():
        paths = list(dict.fromkeys(str(source.path) for source in group))
        if len(paths) == 1:
            result.append(group[0])
        else:
            result.append(ClipSource(key, group[0].path, names=group[0].names, error=(
                f"clip key {key} is claimed by {len(paths)} different files ({', '.join(paths)}): nothing written "
                "for it; give each file its own identity/video/clip (columns of a list file)")))
    return result


def safe_name(text: str) -> str:
    """`text` as a key part or file name: ASCII letters, digits, '_', '-' and '.' (others become '_')."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_-." else "_" for c in text).lstrip("._-") or "unnamed"
