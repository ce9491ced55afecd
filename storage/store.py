"""The clip store: one Zarr v3 group per dataset, one sub-group per clip, published only when complete.

Layout (see docs/architecture.md):

    dataset.zarr/
      zarr.json                       root group
      manifest.parquet                one row per clip (storage.manifest)
      clips/<identity>/<video>/<clip>/
          crops      uint8   [T,256,256,3]   chunked along T
          landmarks  float32 [T,68,2]        crop pixel coordinates
          boxes      float32 [T,4]           crop square x0,y0,x1,y1 in source-frame pixels
          <stage>/   a sub-group per later stage (e.g. face3d/, inversion/) with its own arrays and attrs
          attrs: source path, source sha256, fps, config hash, code version, ...
      .staging/                       clips and stages being written; never read

A clip is written into `.staging/<random>/` and renamed into place when complete. A rename within one file system is
atomic, so readers (and a re-run after a crash) see either the whole clip or nothing, and concurrent workers writing
different clips never touch each other's files. Later stages add a sub-group to a published clip the same way
(`write_stage`): staged, then renamed into the clip, so a stage is there whole or not at all, and a stage never
rewrites the arrays of the clip or of another stage. Re-preprocessing a clip replaces the clip with its stages,
which were derived from the old crops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from storage.files import atomic_path

CLIPS = "clips"
STAGING = ".staging"
# YouTube ids (VoxCeleb's video names) may start with '_' or '-'; a leading '.' would hide a name or mean a parent
_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True, order=True)
class ClipKey:
    """Identity / video / clip, as in VoxCeleb's `id10001/1zcIwhmdeo4/00001.mp4`."""

    identity: str
    video: str
    clip: str

    def __post_init__(self) -> None:
        for part in (self.identity, self.video, self.clip):
            if not _NAME.match(part):
                raise ValueError(f"invalid clip key part {part!r}: letters, digits, '_', '-', '.' only, "
                                 "not starting with '.'")

    @property
    def path(self) -> str:
        return f"{self.identity}/{self.video}/{self.clip}"

    @classmethod
    def parse(cls, text: str) -> "ClipKey":
        parts = text.strip("/").split("/")
        if len(parts) != 3:
            raise ValueError(f"clip key must be identity/video/clip, got {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return self.path


class ClipReader:
    """Read-only view of one published clip; arrays are Zarr arrays, so slicing reads only the chunks it needs."""

    def __init__(self, group: zarr.Group, key: ClipKey):
        self.key = key
        self._group = group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

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
        return self._group[name]

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
        """An array chunked along frames (axis 0), to be filled batch by batch."""
        chunks = (min(self._chunk_frames, max(shape[0], 1)),) + tuple(shape[1:])
        return self._group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, compressors=self._compressors, fill_value=0
        )

    def put(self, name: str, data: np.ndarray) -> zarr.Array:
        """A whole array written at once (small per-frame tables)."""
        array = self.create(name, data.shape, str(data.dtype))
        array[...] = data
        return array

    def set_attrs(self, **attrs: Any) -> None:
        self._group.attrs.update(_jsonable(attrs))


class ClipStore:
    """A dataset's Zarr store on local disk."""

    def __init__(self, root: str | os.PathLike, chunk_frames: int = 16):
        self.root = Path(root)
        self.chunk_frames = chunk_frames
        self.compressors = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")

    @classmethod
    def open(cls, root: str | os.PathLike, create: bool = True, **options) -> "ClipStore":
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
        return self.root / CLIPS / key.identity / key.video / key.clip

    def clips(self) -> list[ClipKey]:
        """Published clips, sorted."""
        base = self.root / CLIPS
        found = [
            ClipKey(*meta.parent.relative_to(base).parts)
            for meta in base.glob("*/*/*/zarr.json")
            if _node_type(meta) == "group"
        ]
        return sorted(found)

    def has(self, key: ClipKey) -> bool:
        return (self.clip_dir(key) / "zarr.json").exists()

    def attrs(self, key: ClipKey) -> dict[str, Any]:
        """Attributes of a published clip (cheap: reads one small JSON file)."""
        with open(self.clip_dir(key) / "zarr.json") as handle:
            return json.load(handle).get("attributes", {})

    def stage_attrs(self, key: ClipKey, stage: str) -> dict[str, Any] | None:
        """Attributes of a published stage of a clip, or None when the stage is not there."""
        try:
            with open(self.clip_dir(key) / stage / "zarr.json") as handle:
                return json.load(handle).get("attributes", {})
        except FileNotFoundError:
            return None

    def find_source(self, sha256: str) -> list[ClipKey]:
        """The published clips made from the file with these bytes (a video may have been preprocessed twice)."""
        return [key for key in self.clips() if self.attrs(key).get("source_sha256") == sha256]

    def clip(self, key: ClipKey) -> ClipReader:
        if not self.has(key):
            raise KeyError(f"clip {key} is not in the store {self.root}")
        return ClipReader(zarr.open_group(str(self.clip_dir(key)), mode="r"), key)

    @contextmanager
    def write_clip(self, key: ClipKey) -> Iterator[ClipWriter]:
        """Stage a clip; publish it (replacing an older version) only if the block ends without an exception."""
        target = self.clip_dir(key)
        with self._staged(target) as writer:
            yield writer
            for parent in (target.parent.parent, target.parent):
                parent.mkdir(parents=True, exist_ok=True)
                _ensure_group(parent)

    @contextmanager
    def write_stage(self, key: ClipKey, stage: str) -> Iterator[ClipWriter]:
        """Stage a later stage's sub-group of a published clip (replacing an older one) and publish it only if the
        block ends without an exception. Arrays created through the writer are chunked along frames like the clip's."""
        if not self.has(key):
            raise KeyError(f"clip {key} is not in the store {self.root}")
        target = self.clip_dir(key) / stage
        if not _NAME.match(stage) or _node_type(target / "zarr.json") == "array":
            raise ValueError(f"invalid stage name {stage!r}: a name of its own, not one of the clip's arrays")
        with self._staged(target) as writer:
            yield writer

    @contextmanager
    def _staged(self, target: Path) -> Iterator[ClipWriter]:
        """A fresh group under `.staging/`, renamed onto `target` when the block succeeds, removed otherwise."""
        staging = self.root / STAGING / f"{uuid.uuid4().hex}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            group = zarr.open_group(str(staging), mode="w-")
            yield ClipWriter(group, self.chunk_frames, self.compressors)
            _publish(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


    def clean_staging(self) -> int:
        """Remove leftovers of interrupted writes; returns how many there were. Call only when no writer runs."""
        staging = self.root / STAGING
        if not staging.exists():
            return 0
        leftovers = list(staging.iterdir())
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return len(leftovers)


def _publish(staging: Path, target: Path) -> None:
    """Rename a finished staging directory onto `target`; an older `target` is moved aside first, then removed."""
    if target.exists():
        retired = staging.with_name(staging.name + "-retired")
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)


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
