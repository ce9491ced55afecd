"""Which source reenacts which driving clip: pair lists from a file, or the paper's protocols over a clip store.

    pairs = read_pairs("pairs.csv")                  # driving, source, source_frame, mode, name columns
    pairs = self_pairs(store)                         # each clip drives its own first frame
    pairs = cross_pairs(store, count=100, seed=0)     # a source and a driving clip of two different people
    split = split_clips(store, ["id10270", "id10271"])  # a test split: those people's clips ...
    pairs = cross_pairs(store, count=100, seed=0, clips=split)   # ... and pairs drawn from it alone

A pair list is data: the flows that use one save it beside their results, so a table can always be traced back to
the exact pairs (and seed) it was computed on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from storage.files import atomic_path
from storage.inputs import safe_name
from storage.store import ClipKey, ClipStore
from tasks.reenact import CLIP_PREFIX, Mode


class ReenactPair(BaseModel):
    """One reenactment: `source` (frame `source_frame`) performs `driving`; `name` names its output."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    driving: str
    source: str | None = None
    source_frame: int = Field(0, ge=0)
    mode: Mode = "cross"


def read_pairs(path: str | os.PathLike) -> list[ReenactPair]:
    """Pairs from a .csv/.parquet list with a `driving` column and optional `source`, `source_frame`, `mode`,
    `name`. Relative file paths resolve against the list's folder; `clip:identity/video/clip` names a store clip.
    Without a name, a pair is named by its row number and its inputs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair list not found: {path}")
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"a pair list is a .csv or .parquet file, got {path}")
    table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    if "driving" not in table.columns:
        raise ValueError(f"{path} needs a 'driving' column (found {list(table.columns)})")
    pairs = []
    for number, row in enumerate(table.to_dict("records")):
        row = {key: value for key, value in row.items() if not (isinstance(value, float) and np.isnan(value))}
        driving, source = _resolve(row["driving"], path.parent), _resolve(row.get("source"), path.parent)
        name = row.get("name") or safe_name(f"{number:05d}_{_stem(source)}__{_stem(driving)}")
        pairs.append(ReenactPair(name=str(name), driving=driving, source=source,
                                 source_frame=int(row.get("source_frame", 0)), mode=row.get("mode", "cross")))
    _check_unique(pairs, str(path))
    return pairs


def split_clips(store: ClipStore, identities: Sequence[str] | None = None) -> list[ClipKey]:
    """The store's clips of `identities` (a test split), sorted; None: every clip. An identity without a clip in
    the store is an error that names it."""
    keys = store.clips()
    if identities is None:
        return keys
    held = {key.identity for key in keys}
    missing = sorted(set(identities) - held)
    if missing:
        raise ValueError(f"identities not in the store {store.root}: {', '.join(missing)} (it holds "
                         f"{len(held)}: {', '.join(sorted(held)[:5])}{', ...' if len(held) > 5 else ''})")
    return [key for key in keys if key.identity in set(identities)]


def self_pairs(store: ClipStore, clips: Sequence[ClipKey] | None = None) -> list[ReenactPair]:
    """The paper's self-reenactment protocol: every clip's first frame is the source, the clip drives it.
    `clips`: only these (default: every clip of the store)."""
    return [ReenactPair(name=f"self_{_key_name(key)}", driving=f"{CLIP_PREFIX}{key}", mode="self")
            for key in (store.clips() if clips is None else clips)]


def cross_pairs(store: ClipStore, count: int, seed: int = 0,
                clips: Sequence[ClipKey] | None = None) -> list[ReenactPair]:
    """The cross-reenactment protocol: `count` random (source, driving) pairs of clips of two different identities,
    the source's first frame reenacting the driving clip; the same seed and clips give the same pairs. `clips`:
    draw from these only (default: every clip of the store)."""
    keys = store.clips() if clips is None else list(clips)
    identities = sorted({key.identity for key in keys})
    if len(identities) < 2:
        raise ValueError(f"cross-reenactment needs clips of at least two identities; {store.root} has "
                         f"{len(identities)}{'' if clips is None else ' among the clips asked for'}")
    rng = np.random.default_rng(seed)
    chosen: dict[tuple[ClipKey, ClipKey], None] = {}
    possible = sum(1 for a in keys for b in keys if a.identity != b.identity)
    while len(chosen) < min(count, possible):
        source, driving = (keys[i] for i in rng.integers(0, len(keys), size=2))
        if source.identity != driving.identity:
            chosen.setdefault((source, driving))
    return [ReenactPair(name=f"cross_{_key_name(source)}__{_key_name(driving)}", driving=f"{CLIP_PREFIX}{driving}",
                        source=f"{CLIP_PREFIX}{source}") for source, driving in chosen]


def write_pairs(pairs: list[ReenactPair], path: str | os.PathLike) -> Path:
    """The pair list as parquet, written whole or not at all."""
    path = Path(path)
    with atomic_path(path) as partial:
        pd.DataFrame([pair.model_dump() for pair in pairs]).to_parquet(partial, index=False)
    return path


def _resolve(value, root: Path) -> str | None:
    if value is None or str(value) == "":
        return None
    text = str(value)
    if text.startswith(CLIP_PREFIX) or Path(text).is_absolute():
        return text
    return str(root / text)


def _stem(text: str | None) -> str:
    if text is None:
        return "self"
    return text[len(CLIP_PREFIX):].replace("/", "_") if text.startswith(CLIP_PREFIX) else Path(text).stem


def _key_name(key: ClipKey) -> str:
    return f"{key.identity}_{key.video}_{key.clip}"


def _check_unique(pairs: list[ReenactPair], where: str) -> None:
    names = [pair.name for pair in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{where}: pair names must be unique; repeated: {', '.join(repeated[:5])}")
