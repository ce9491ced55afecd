"""The clip store: one Zarr v3 group per dataset, one sub-group per clip, published only when whole and checked.

Layout (see docs/architecture.md):

    dataset.zarr/
      zarr.json                       root group
      manifest.parquet                one row per clip (storage.manifest)
      clips/<identity>/<video>/<clip> a link to the clip's current version in .versions/
      .versions/<id>/                 a clip version: its arrays, attrs and links to its stages' versions
          crops      uint8   [T,256,256,3]   chunked along T
          landmarks  float32 [T,68,2]        crop pixel coordinates
          boxes      float32 [T,4]           crop square x0,y0,x1,y1 in source-frame pixels
          <stage>    a link to a later stage's version (e.g. face3d/, inversion/) with its own arrays and attrs
          attrs: source path, source sha256, fps, config hash, code version, checksums, ...
      .versions/<id>.retired          marks a replaced version, removed once no reader can still be using it
      .staging/<id>/ + <id>.lease     clips and stages being written, each owned by a live writer; never read
      .locks/                         short locks that serialise publishing per clip

Writing: a clip (or stage) is written into `.staging/<id>/`, whose lease names its writer and is kept fresh by a
heartbeat; only stale leases are ever cleaned up, so concurrent runs never delete each other's work. When the block
ends, the group is checked complete (every expected array with its shape and dtype, every chunk written), the size
and CRC-32 of every chunk and array metadata file are recorded in its attrs, and it is renamed into `.versions/`.
Publishing swaps the clip's link to the new version with one atomic rename, so a reader or a re-run sees the old
clip or the new one, never neither. Replaced versions stay readable for a grace period, so a reader that opened
the old one finishes it.

Reading checks every chunk against the recorded size and checksum: a missing chunk, or one whose bytes changed,
raises an error that names the clip and the chunk, never zeros or a bare codec error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import shutil
import string
import time
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Mapping

import numpy as np
import zarr
from zarr.storage import LocalStore

from storage.files import STALE_AFTER_S, Lease, atomic_path, file_lock, stale_reason

CLIPS = "clips"
STAGING = ".staging"
VERSIONS = ".versions"
LOCKS = ".locks"
RETIRED = ".retired"
RETIRED_GRACE_S = STALE_AFTER_S  # a replaced version stays readable this long
LOCK_BUCKETS = 256  # publishing locks, shared by clips whose key hashes alike (publishing takes milliseconds)
INTEGRITY = "integrity"

# A key part: letters, digits, '_', '-', '.', and the '%XX' / '~' of encoded names; never starting with '.'
_PART = re.compile(r"^[A-Za-z0-9_\-%~][A-Za-z0-9_.\-%~]*$")
_STAGE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")
_SAFE = frozenset(string.ascii_letters + string.digits + "_.-")
MAX_PART = 200  # characters of an encoded name; longer ones keep a prefix and a hash of the whole name


class StoreError(RuntimeError):
    """A write that could not be published (incomplete, or the store changed under it); nothing was published."""


class ClipDataError(RuntimeError):
    """A published clip whose data cannot be read as it was written (`reenact store-verify --repair` heals it)."""


class MissingChunkError(ClipDataError):
    pass


class CorruptChunkError(ClipDataError):
    pass


def encode_name(name: str) -> str:
    """A file or folder name as a key part: stable (same name, same part) and collision-free. Letters, digits, '_',
    '-' and '.' stay; every other character becomes its UTF-8 bytes as %XX (a leading '.' too), so VoxCeleb names
    are kept as they are and others stay readable ('Jöhn Smith' -> 'J%C3%B6hn%20Smith'). A part longer than
    MAX_PART keeps a prefix and '~' with 16 hex digits of the name's sha256 ('~' appears in no other encoding)."""
    if not name:
        raise ValueError("a clip key part cannot be empty")
    raw = lambda text: text.encode("utf-8", "surrogateescape")  # noqa: E731  (undecodable file names keep their bytes)
    encoded = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in raw(c)) for c in name)
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if len(encoded) > MAX_PART:
        prefix = re.sub(r"%[0-9A-F]?$", "", encoded[: MAX_PART - 17])
        encoded = f"{prefix}~{hashlib.sha256(raw(name)).hexdigest()[:16]}"
    return encoded


def decode_name(part: str) -> str | None:
    """The name a key part was encoded from; None for a shortened ('~') part, whose name the clip's attrs keep."""
    if "~" in part:
        return None
    return re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  part.encode()).decode("utf-8", "surrogateescape")


@dataclass(frozen=True, order=True)
class ClipKey:
    """Identity / video / clip, as in VoxCeleb's `id10001/1zcIwhmdeo4/00001.mp4`; parts are encoded names
    (`from_names` encodes any name)."""

    identity: str
    video: str
    clip: str

    def __post_init__(self) -> None:
        for part in (self.identity, self.video, self.clip):
            if not _PART.match(part):
                raise ValueError(f"invalid clip key part {part!r}: letters, digits, '_', '-', '.', '%', '~' only, "
                                 "not starting with '.' (ClipKey.from_names encodes any name)")

    @classmethod
    def from_names(cls, identity: str, video: str, clip: str) -> ClipKey:
        return cls(encode_name(identity), encode_name(video), encode_name(clip))

    @property
    def path(self) -> str:
        return f"{self.identity}/{self.video}/{self.clip}"

    @classmethod
    def parse(cls, text: str) -> ClipKey:
        parts = text.strip("/").split("/")
        if len(parts) != 3:
            raise ValueError(f"clip key must be identity/video/clip, got {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class ArraySpec:
    """An array a write must contain to be published: its dtype and shape, where None stands for the clip's frame
    count (the same for every array of the clip, and for a stage the clip's own)."""

    dtype: str
    shape: tuple[int | None, ...]


class ClipReader:
    """Read-only view of one published clip version; arrays are Zarr arrays, so slicing reads only the chunks it
    needs, each checked against the checksum recorded when it was published."""

    def __init__(self, group: zarr.Group, key: ClipKey, version: Path, store_root: Path):
        self.key = key
        self.version = version  # the version directory this reader reads, whatever replaces the clip later
        self._group = group
        self._store_root = store_root

    @property
    def attrs(self) -> dict[str, Any]:
        """The clip's attributes (without the checksum record)."""
        return {k: v for k, v in self._group.attrs.items() if k != INTEGRITY}

    @property
    def arrays(self) -> list[str]:
        return sorted(name for name, _ in self._group.arrays())

    def __getitem__(self, name: str) -> zarr.Array:
        return self._group[name]

    def __len__(self) -> int:
        return int(self._group["crops"].shape[0])

    @property
    def stages(self) -> list[str]:
        """The later stages published in this clip (sub-groups), sorted."""
        return sorted(name for name, _ in self._group.groups())

    def stage(self, name: str) -> zarr.Group:
        """A later stage's group (arrays and attrs); KeyError when that stage has not been written."""
        if name not in self.stages:
            raise KeyError(f"clip {self.key} has no {name!r} stage (has: {', '.join(self.stages) or 'none'})")
        return _open_checked(Path(os.path.realpath(self.version / name)), f"{self.key} stage {name}", self._store_root)

    @property
    def crops(self) -> zarr.Array:
        return self._group["crops"]

    @property
    def landmarks(self) -> zarr.Array:
        return self._group["landmarks"]

    @property
    def boxes(self) -> zarr.Array:
        return self._group["boxes"]

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Crops [start, stop) as uint8 [N,256,256,3]."""
        return self.crops[start:stop]

    def iter_frames(self, batch_size: int) -> Iterator[np.ndarray]:
        """Crops in consecutive batches; memory holds one batch."""
        for start in range(0, len(self), batch_size):
            yield self.crops[start : start + batch_size]


class ClipWriter:
    """Arrays and attributes of one clip being staged; obtained from `ClipStore.write_clip`."""

    def __init__(self, group: zarr.Group, chunk_frames: int, compressors):
        self._group = group
        self._chunk_frames = chunk_frames
        self._compressors = compressors

    def create(self, name: str, shape: tuple[int, ...], dtype: str) -> zarr.Array:
        """An array chunked along frames (axis 0), to be filled batch by batch. Every chunk is stored, even one that
        equals the fill value, so a missing chunk file always means damage."""
        chunks = (min(self._chunk_frames, max(shape[0], 1)),) + tuple(shape[1:])
        return self._group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=self._compressors,
                                        fill_value=0, config={"write_empty_chunks": True})

    def put(self, name: str, data: np.ndarray) -> zarr.Array:
        """A whole array written at once (small per-frame tables)."""
        array = self.create(name, data.shape, str(data.dtype))
        array[...] = data
        return array

    def set_attrs(self, **attrs: Any) -> None:
        self._group.attrs.update(_jsonable(attrs))


class ClipStore:
    """A dataset's Zarr store on a local or POSIX shared file system (atomic rename, symbolic links, fcntl locks)."""

    def __init__(self, root: str | os.PathLike, chunk_frames: int = 16, stale_after_s: float = STALE_AFTER_S):
        self.root = Path(root)
        self.chunk_frames = chunk_frames
        self.stale_after_s = stale_after_s
        self.compressors = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")

    @classmethod
    def open(cls, root: str | os.PathLike, create: bool = True, **options) -> ClipStore:
        """Open a store, creating an empty one if asked; raise FileNotFoundError otherwise."""
        store = cls(root, **options)
        if not (store.root / "zarr.json").exists():
            if not create:
                raise FileNotFoundError(f"no clip store at {store.root} (run preprocess-dataset first)")
            store.root.mkdir(parents=True, exist_ok=True)
            _ensure_group(store.root)
            _ensure_group(store.root / CLIPS)
        return store

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.parquet"

    def clip_dir(self, key: ClipKey) -> Path:
        """The clip's path in the store (a link to its current version)."""
        return self.root / CLIPS / key.identity / key.video / key.clip

    def clips(self) -> list[ClipKey]:
        """Published clips, sorted (a clip whose metadata is damaged too: reading it raises ClipDataError)."""
        base = self.root / CLIPS
        found = []
        for meta in base.glob("*/*/*/zarr.json"):
            parts = meta.parent.relative_to(base).parts
            if all(_PART.match(part) for part in parts) and _node_type(meta) != "array":
                found.append(ClipKey(*parts))
        return sorted(found)

    def has(self, key: ClipKey) -> bool:
        return (self.clip_dir(key) / "zarr.json").exists()

    def attrs(self, key: ClipKey) -> dict[str, Any]:
        """Attributes of a published clip, without the checksum record (cheap: reads one small JSON file)."""
        return _attrs(self.clip_dir(key))

    def stage_attrs(self, key: ClipKey, stage: str) -> dict[str, Any] | None:
        """Attributes of a published stage of a clip, or None when the stage is not there."""
        try:
            return _attrs(self.clip_dir(key) / stage)
        except FileNotFoundError:
            return None

    def find_source(self, sha256: str) -> list[ClipKey]:
        """The published clips made from the file with these bytes (a video may have been preprocessed twice)."""
        return [key for key in self.clips() if self.attrs(key).get("source_sha256") == sha256]

    def clip(self, key: ClipKey) -> ClipReader:
        """A reader of the clip's current version (it keeps reading that version if the clip is replaced)."""
        if not self.has(key):
            raise KeyError(f"clip {key} is not in the store {self.root}")
        version = Path(os.path.realpath(self.clip_dir(key)))
        return ClipReader(_open_checked(version, str(key), self.root), key, version, self.root)

    # --- checking ----------------------------------------------------------------------------------------------------

    def check(self, key: ClipKey, full: bool = False, stages: bool = True) -> list[str]:
        """What is wrong with a published clip (empty when it is whole), each problem naming the array and chunk.

        The cheap check (`full=False`, what preprocess-dataset runs before skipping a clip): the attrs parse and
        match their recorded checksum, every array's metadata matches its checksum, every chunk file is there with
        its recorded size. The full check (store-verify) reads every chunk and compares its CRC-32 as well."""
        if not self.has(key):
            return ["not in the store"]
        version = Path(os.path.realpath(self.clip_dir(key)))
        problems = _check_group(version, full)
        if stages and not any(p.startswith("metadata") for p in problems):
            for stage in _stage_names(version):
                problems += [f"stage {stage}: {p}" for p in _check_group(Path(os.path.realpath(version / stage)), full)]
        return problems

    # --- writing -----------------------------------------------------------------------------------------------------

    @contextmanager
    def write_clip(self, key: ClipKey, expect: Mapping[str, ArraySpec] | None = None) -> Iterator[ClipWriter]:
        """Stage a clip; publish it (replacing an older version) only if the block ends without an exception and the
        clip is complete: every array in `expect` with its dtype and shape, every chunk of every array written."""
        with self._staging() as (folder, lease):
            writer = ClipWriter(zarr.open_group(str(folder), mode="w-"), self.chunk_frames, self.compressors)
            yield writer
            self._seal(folder, lease, expect, None, f"clip {key}")
            target = self.clip_dir(key)
            for parent in (target.parent.parent, target.parent):
                parent.mkdir(parents=True, exist_ok=True)
                _ensure_group(parent)
            with self._publishing(key):
                old = self._swap(folder, target)
        self._retire(old)

    @contextmanager
    def write_stage(self, key: ClipKey, stage: str, expect: Mapping[str, ArraySpec] | None = None,
                    base: ClipReader | None = None) -> Iterator[ClipWriter]:
        """Stage a later stage's sub-group of a published clip (replacing an older one) and publish it only if the
        block ends without an exception and the stage is complete (as in `write_clip`; None in a shape is the
        clip's frame count). `base` is the reader the stage was computed from (default: the clip's current
        version); if the clip is replaced meanwhile, nothing is published (StoreError). Arrays created through
        the writer are chunked along frames like the clip's."""
        if not self.has(key):
            raise KeyError(f"clip {key} is not in the store {self.root}")
        version = base.version if base is not None else Path(os.path.realpath(self.clip_dir(key)))
        if not _STAGE.match(stage) or _node_type(version / stage / "zarr.json") == "array":
            raise ValueError(f"invalid stage name {stage!r}: a name of its own, not one of the clip's arrays")
        frames = _array_shape(version / "crops")[0] if (version / "crops").exists() else None
        with self._staging() as (folder, lease):
            writer = ClipWriter(zarr.open_group(str(folder), mode="w-"), self.chunk_frames, self.compressors)
            yield writer
            self._seal(folder, lease, expect, frames, f"clip {key} stage {stage}")
            with self._publishing(key):
                if Path(os.path.realpath(self.clip_dir(key))) != version:
                    raise StoreError(f"clip {key} was replaced while its {stage} stage was computed from the old "
                                     "version; nothing was published: run again")
                old = self._swap(folder, version / stage)
        self._retire(old)

    @contextmanager
    def _staging(self) -> Iterator[tuple[Path, Lease]]:
        """A fresh folder under `.staging/` owned by a lease; removed with its lease when the block ends (it is gone
        already when it was published)."""
        root = self.root / STAGING
        root.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        lease = Lease.take(root / f"{name}.lease")
        folder = root / name
        try:
            yield folder, lease
        finally:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            lease.release()

    def _seal(self, folder: Path, lease: Lease, expect: Mapping[str, ArraySpec] | None, frames: int | None,
              label: str) -> None:
        """Check a staged group complete and record its checksums; StoreError (nothing published) otherwise."""
        if not lease.held():
            raise StoreError(f"{label}: its staging folder was removed as stale by another run while this one wrote "
                             f"it (no heartbeat for over {self.stale_after_s:.0f} s: was this process suspended?); "
                             "nothing was published: run again")
        problems = _incomplete(folder, expect or {}, frames)
        if problems:
            raise StoreError(f"{label} is incomplete, not published: {'; '.join(problems)}")
        group = zarr.open_group(str(folder), mode="r+")
        attrs = {k: v for k, v in group.attrs.asdict().items() if k != INTEGRITY}
        group.attrs[INTEGRITY] = _jsonable({"checksum": "crc32", "attrs": _crc_json(attrs),
                                            "arrays": {name: _array_record(folder / name) for name in _array_names(folder)}})

    @contextmanager
    def _publishing(self, key: ClipKey) -> Iterator[None]:
        bucket = int(hashlib.sha256(str(key).encode()).hexdigest(), 16) % LOCK_BUCKETS
        with file_lock(self.root / LOCKS / f"{bucket:02x}.lock"):
            yield

    def _swap(self, folder: Path, target: Path) -> Path | None:
        """Move a sealed staging folder into `.versions/` and point `target` at it with one atomic rename; returns
        the version it replaced. Caller holds the clip's publishing lock."""
        version = self.root / VERSIONS / folder.name
        version.parent.mkdir(exist_ok=True)
        os.rename(folder, version)
        old = None
        if target.is_symlink():
            old = Path(os.path.realpath(target))
        elif target.exists():  # a store written before versions: the old directory moves aside first
            old = self.root / VERSIONS / uuid.uuid4().hex
            os.rename(target, old)
        link = target.with_name(f".{target.name}.{folder.name}.link")
        # a relative link, so the store can be moved, copied or mounted elsewhere
        os.symlink(os.path.relpath(os.path.realpath(version), os.path.realpath(target.parent)), link)
        os.replace(link, target)
        return old

    def _retire(self, version: Path | None) -> None:
        """Mark a replaced version; `clean_staging` removes it after RETIRED_GRACE_S (readers may still use it)."""
        if version is not None:
            version.with_name(version.name + RETIRED).touch()

    # --- cleaning ----------------------------------------------------------------------------------------------------

    def clean_staging(self) -> int:
        """Remove what writers left behind and no one uses any more: staging folders whose lease is stale (writer
        gone, or no heartbeat for `stale_after_s`), and replaced versions past their grace period. Safe while other
        runs write. Returns how many staging folders and versions were removed."""
        removed = 0
        staging = self.root / STAGING
        names = {entry.name.removesuffix(".lease") for entry in staging.iterdir()
                 if not entry.name.startswith(".")} if staging.exists() else set()  # '.': a lease being written
        for name in sorted(names):
            folder, lease = staging / name, staging / f"{name}.lease"
            if lease.exists():
                if stale_reason(lease, self.stale_after_s) is None:
                    continue
            elif not folder.exists() or time.time() - folder.stat().st_mtime < self.stale_after_s:
                continue  # a folder without a lease (written by an older version of this code): wait as long
            removed += folder.exists()
            shutil.rmtree(folder, ignore_errors=True)
            lease.unlink(missing_ok=True)
        versions = self.root / VERSIONS
        if versions.exists():
            for marker in versions.glob(f"*{RETIRED}"):
                if time.time() - marker.stat().st_mtime > RETIRED_GRACE_S:
                    _remove_version(versions / marker.name.removesuffix(RETIRED))
                    marker.unlink(missing_ok=True)
                    removed += 1
        return removed

    def unreferenced_versions(self, older_than_s: float | None = None) -> list[Path]:
        """Versions no clip links to and not retired: left by a writer killed between moving a version into place and
        swapping the link (or after the swap, before marking the old one). Only those older than `older_than_s`
        (default: the stale time; a live writer's version is unreferenced for the milliseconds of its swap)."""
        versions = self.root / VERSIONS
        if not versions.exists():
            return []
        used = set()
        for link in (self.root / CLIPS).glob("*/*/*"):
            if link.is_symlink():
                version = Path(os.path.realpath(link))
                used.add(version)
                used.update(Path(os.path.realpath(version / stage)) for stage in _stage_names(version))
        retired = {versions / m.name.removesuffix(RETIRED) for m in versions.glob(f"*{RETIRED}")}
        old = time.time() - (self.stale_after_s if older_than_s is None else older_than_s)
        return sorted(path for path in versions.iterdir()
                      if path.is_dir() and path not in used and path not in retired and path.stat().st_mtime < old)

    def remove_unreferenced(self) -> int:
        found = self.unreferenced_versions()
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
        for link in (self.root / CLIPS).glob("*/*/.*.link"):  # a link made and never swapped in
            link.unlink(missing_ok=True)
        return len(found)

    def remove_stage(self, key: ClipKey, stage: str) -> None:
        """Unpublish a stage of a clip (a damaged one, so that encode-dataset computes it again)."""
        target = self.clip_dir(key) / stage
        with self._publishing(key):
            if not target.is_symlink():
                if target.exists():
                    old = self.root / VERSIONS / uuid.uuid4().hex
                    os.rename(target, old)
                    self._retire(old)
                return
            old = Path(os.path.realpath(target))
            target.unlink()
        self._retire(old)


# --- reading, checked ----------------------------------------------------------------------------------------------

class _CheckedStore(LocalStore):
    """A read-only local Zarr store of one published group that refuses to return a missing chunk or one whose size
    or CRC-32 differs from what was recorded when the group was published."""

    def __init__(self, root: Path, *, read_only: bool = True, label: str = "", store_root: Path | None = None,
                 record: dict | None = None):
        super().__init__(root, read_only=read_only)
        self.label = label
        self.store_root = store_root
        self.record = record

    def with_read_only(self, read_only: bool = False) -> _CheckedStore:
        return type(self)(self.root, read_only=read_only, label=self.label, store_root=self.store_root,
                          record=self.record)

    async def get(self, key, prototype=None, byte_range=None):
        value = await super().get(key, prototype, byte_range)
        chunk = _chunk_of(key)
        if chunk is None:
            return value
        array, index = chunk
        where = f"clip {self.label}: array {array!r} chunk {key[len(array) + 1:]}"
        repair = f"run `reenact store-verify {self.store_root} --repair`"
        if value is None:
            raise MissingChunkError(f"{where} is missing (deleted, or never written), so the clip cannot be read "
                                    f"whole: {repair}")
        expected = _recorded_chunk(self.record, array, index)
        if expected is not None and byte_range is None:
            size, crc = expected
            data = value.as_numpy_array()
            # in a worker thread, like the read itself: zlib releases the GIL, so chunks are checked in parallel
            if len(data) != size or await asyncio.to_thread(zlib.crc32, data) != crc:
                raise CorruptChunkError(f"{where} is corrupt: its bytes differ from those published ({len(data)} "
                                        f"bytes now, {size} then): {repair}")
        return value


def _open_checked(version: Path, label: str, store_root: Path) -> zarr.Group:
    try:
        attrs = json.loads((version / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError) as err:
        raise ClipDataError(f"clip {label}: its metadata cannot be read ({err}): run "
                            f"`reenact store-verify {store_root} --repair`") from err
    store = _CheckedStore(version, label=label, store_root=store_root, record=attrs.get(INTEGRITY))
    return zarr.open_group(store=store, mode="r")


def _chunk_of(key: str) -> tuple[str, tuple[int, ...]] | None:
    """('crops', (3, 0, 0, 0)) for the chunk key 'crops/c/3/0/0/0' (Zarr v3's default encoding); None otherwise."""
    parts = key.split("/")
    for position in range(len(parts) - 2, -1, -1):
        if parts[position] == "c":
            tail = parts[position + 1 :]
            if tail and all(p.isdigit() for p in tail):
                return "/".join(parts[:position]), tuple(int(p) for p in tail)
            return None
    return None


def _recorded_chunk(record: dict | None, array: str, index: tuple[int, ...]) -> tuple[int, int] | None:
    entry = ((record or {}).get("arrays") or {}).get(array)
    if entry is None:
        return None
    grid = entry["grid"]
    if len(index) != len(grid) or any(i >= g for i, g in zip(index, grid)):
        return None
    size, crc = entry["chunks"][int(np.ravel_multi_index(index, grid))]
    return int(size), int(crc)


# --- sealing and checking groups -----------------------------------------------------------------------------------

def _array_names(group: Path) -> list[str]:
    return sorted(p.name for p in group.iterdir()
                  if not p.is_symlink() and _node_type(p / "zarr.json") == "array")


def _stage_names(version: Path) -> list[str]:
    """The sub-groups of a clip version (a stage whose metadata is damaged too)."""
    return sorted(p.name for p in version.iterdir()
                  if _STAGE.match(p.name) and (p / "zarr.json").exists() and _node_type(p / "zarr.json") != "array")


def _array_meta(array: Path) -> dict:
    return json.loads((array / "zarr.json").read_text())


def _array_shape(array: Path) -> tuple[int, ...]:
    return tuple(_array_meta(array)["shape"])


def _chunk_paths(array: Path, meta: dict) -> tuple[list[int], list[Path]]:
    """The chunk grid of an array and its chunk files in C order (Zarr v3's default 'c/i/j/...' keys)."""
    encoding = meta.get("chunk_key_encoding", {})
    if encoding.get("name", "default") != "default" or encoding.get("configuration", {}).get("separator", "/") != "/":
        raise StoreError(f"{array.name}: unsupported chunk key encoding {encoding}")
    shape, chunks = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks)]
    return grid, [array.joinpath("c", *map(str, index)) for index in np.ndindex(*grid)]


def _incomplete(folder: Path, expect: Mapping[str, ArraySpec], frames: int | None) -> list[str]:
    """Why a staged group may not be published: expected arrays missing or of another shape or dtype, frame counts
    that disagree, chunks never written."""
    problems = []
    shapes = {}
    for name in _array_names(folder):
        meta = _array_meta(folder / name)
        shapes[name] = (tuple(meta["shape"]), str(np.dtype(meta["data_type"])))
        missing = [p for p in _chunk_paths(folder / name, meta)[1] if not p.exists()]
        if missing:
            problems.append(f"{name}: {len(missing)} chunks never written (first {missing[0].relative_to(folder / name)})")
    for name, spec in expect.items():
        if name not in shapes:
            problems.append(f"{name}: missing")
            continue
        shape, dtype = shapes[name]
        if dtype != str(np.dtype(spec.dtype)):
            problems.append(f"{name}: dtype {dtype}, expected {np.dtype(spec.dtype)}")
        if len(shape) != len(spec.shape) or any(want is not None and got != want for got, want in zip(shape, spec.shape)):
            wanted = ", ".join("T" if s is None else str(s) for s in spec.shape)
            problems.append(f"{name}: shape {list(shape)}, expected [{wanted}]")
            continue
        for got, want in zip(shape, spec.shape):
            if want is None:
                if frames is None:
                    frames = got
                elif got != frames:
                    problems.append(f"{name}: {got} frames, expected {frames}")
    return problems


def _array_record(array: Path) -> dict:
    meta_bytes = (array / "zarr.json").read_bytes()
    grid, paths = _chunk_paths(array, json.loads(meta_bytes))
    chunks = []
    for path in paths:
        data = path.read_bytes()
        chunks.append([len(data), zlib.crc32(data)])
    return {"meta": [len(meta_bytes), zlib.crc32(meta_bytes)], "grid": grid, "chunks": chunks}


def _check_group(group: Path, full: bool) -> list[str]:
    try:
        attrs = json.loads((group / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError) as err:
        return [f"metadata unreadable ({type(err).__name__}: {err})"]
    record = attrs.get(INTEGRITY)
    if not isinstance(record, dict) or "arrays" not in record:
        return ["no checksums recorded (written before checksums were kept): compute it again"]
    problems = []
    if _crc_json({k: v for k, v in attrs.items() if k != INTEGRITY}) != record.get("attrs"):
        problems.append("attributes changed since publishing")
    for name, entry in record["arrays"].items():
        array = group / name
        try:
            meta_bytes = (array / "zarr.json").read_bytes()
        except OSError:
            problems.append(f"{name}: array metadata missing")
            continue
        if [len(meta_bytes), zlib.crc32(meta_bytes)] != entry["meta"]:
            problems.append(f"{name}: array metadata changed since publishing")
            continue
        _, paths = _chunk_paths(array, json.loads(meta_bytes))
        for path, (size, crc) in zip(paths, entry["chunks"]):
            where = f"{name} chunk {path.relative_to(array)}"
            try:
                if not full:
                    actual = os.stat(path).st_size
                    if actual != size:
                        problems.append(f"{where}: {actual} bytes, {size} published")
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                problems.append(f"{where}: missing")
                continue
            except OSError as err:
                problems.append(f"{where}: unreadable ({err})")
                continue
            if len(data) != size:
                problems.append(f"{where}: {len(data)} bytes, {size} published")
            elif zlib.crc32(data) != crc:
                problems.append(f"{where}: bytes changed (checksum mismatch)")
    return problems


def _attrs(group: Path) -> dict[str, Any]:
    with open(group / "zarr.json") as handle:
        attrs = json.load(handle).get("attributes", {})
    attrs.pop(INTEGRITY, None)
    return attrs


def _crc_json(value: Any) -> int:
    return zlib.crc32(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def _remove_version(version: Path) -> None:
    """A clip version and the stage versions it links to (a stage version belongs to one clip version)."""
    if version.is_dir():
        for entry in version.iterdir():
            if entry.is_symlink():
                shutil.rmtree(os.path.realpath(entry), ignore_errors=True)
    shutil.rmtree(version, ignore_errors=True)


def _ensure_group(path: Path) -> None:
    """Write a group's zarr.json if it is missing; safe when several processes race (atomic replace, same bytes)."""
    meta = path / "zarr.json"
    if meta.exists():
        return
    with atomic_path(meta) as partial:
        partial.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))


def _node_type(meta: Path) -> str | None:
    try:
        return json.loads(meta.read_text()).get("node_type")
    except (OSError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    """Attributes must be plain JSON: numpy scalars and paths become Python numbers and strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
