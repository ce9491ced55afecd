"""Reading checkpoints without running code from them, and the safetensors copies we convert them to.

The official checkpoints are pickles (`torch.save`). A pickle may name any Python callable and have it called on
load, so a tampered file runs code the moment it is opened. Every pickle here therefore goes through torch's
weights-only unpickler (`torch.load(..., weights_only=True)`), which builds tensors, containers and plain scalars
only. Training scripts of that era also stored a few plain data objects next to the weights (numpy scalars and
arrays, an `argparse.Namespace` of options); those, and nothing else, are allowed in `PLAIN_DATA_GLOBALS`. A file
naming any other global is refused with `UnsafeCheckpointError`, before that global is ever called.

Converted copies are safetensors files: a JSON header and raw tensor bytes, with nothing executable. The first load
of an official checkpoint writes one (`load_converted`) and later loads read it instead:

    <cache>.safetensors
        tensors   the state dict under one top-level key of the source (`g_ema`, `e`, ...), or all of it
        metadata  source file name, size, mtime, sha256; the key; the source's other plain top-level entries
                  (A's `w_plus`, `num_layers_shift`, ...) as JSON

The copy is used while the source keeps its size and mtime, or, when those changed, while its sha256 is the one
recorded. All writes go to a temporary file first and are renamed into place, so readers never see half a file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from storage.files import atomic_path, sha256_file


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointError):
    """The file names a callable or class that is not plain data; nothing from it was run."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable checkpoint (truncated, not a torch file, not a dict of tensors)."""


class CheckpointKeysError(CheckpointError):
    """The file's top-level keys, or its state-dict names, are not the expected ones."""


def _numpy_globals() -> list[tuple[Any, str]]:
    """Numpy scalars and arrays, under both module paths: numpy 1 pickles say `numpy.core`, numpy 2 `numpy._core`."""
    multiarray = np._core.multiarray
    found: list[tuple[Any, str]] = []
    for obj in (multiarray.scalar, multiarray._reconstruct):
        found += [(obj, f"numpy.core.multiarray.{obj.__name__}"), (obj, f"numpy._core.multiarray.{obj.__name__}")]
    found += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    # numpy 2 pickles a dtype through its class (numpy.dtypes.Float64DType, ...); numeric and bool kinds only
    for kind in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                 np.float16, np.float32, np.float64):
        dtype_class = type(np.dtype(kind))
        found.append((dtype_class, f"numpy.dtypes.{dtype_class.__name__}"))
    return found


# Plain data that may sit next to the weights in an official checkpoint. None of these run code of the file's choice:
# numpy rebuilds numeric arrays and scalars from bytes; a Namespace only receives attributes.
PLAIN_DATA_GLOBALS: list[tuple[Any, str]] = [(argparse.Namespace, "argparse.Namespace"), *_numpy_globals()]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level dict of a torch checkpoint, read with the weights-only unpickler (tensors on the CPU).

    Raises `UnsafeCheckpointError` when the file names a global outside `PLAIN_DATA_GLOBALS` (a pickled function,
    a class with `__reduce__`, a lambda), `CorruptCheckpointError` when it cannot be read or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(PLAIN_DATA_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError... for bad files
        offending = _disallowed_globals(path, str(error))
        if offending:
            raise UnsafeCheckpointError(
                f"{path} refused: it names {', '.join(offending)}, which is not plain data (tensors, numbers, "
                f"strings, containers). Loading it could run code, so nothing from it was run. Get the file from "
                f"its official source; if you made it, save `model.state_dict()` rather than the model object."
            ) from None
        raise CorruptCheckpointError(f"{path} is not a readable torch checkpoint: {type(error).__name__}: {error}") \
            from error
    if not isinstance(checkpoint, dict):
        raise CorruptCheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a dict of weights")
    return checkpoint


def _disallowed_globals(path: Path, message: str) -> list[str]:
    """The globals a refused pickle names beyond the allowed ones ([] when the failure was something else)."""
    if "GLOBAL" not in message:
        return []
    allowed = {name for _, name in PLAIN_DATA_GLOBALS}
    try:  # reads the pickle's opcodes without executing them; zip-format checkpoints only
        named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (pre-1.6) format: torch's message names the first one
        named = re.findall(r"GLOBAL ([\w.]+)", message)
    return sorted(set(named) - allowed)


# ---------------------------------------------------------------------------------------------------- safetensors

_METADATA_KEY = "reenact"  # our metadata, one JSON object under one safetensors metadata key


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, Any] | None = None) -> None:
    """Write tensors and JSON-serialisable metadata to `path` atomically."""
    tensors = _standalone_tensors(state)
    header = {"format": "pt", _METADATA_KEY: json.dumps(dict(metadata or {}), sort_keys=True)}
    with atomic_path(Path(path)) as temporary:
        save_file(tensors, temporary, metadata=header)


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (on the CPU) and the metadata `save_safetensors` wrote ({} for files written by others)."""
    path = Path(path)
    metadata = read_safetensors_metadata(path)
    try:
        return load_file(path, device="cpu"), metadata
    except (SafetensorError, OSError) as error:
        raise CorruptCheckpointError(f"{path} is not a readable safetensors file: {error}") from error


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Only the metadata of a safetensors file (reads the header, not the tensors)."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
        metadata = json.loads(header.get(_METADATA_KEY, "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError, RecursionError) as error:  # deep nesting: RecursionError
        raise CorruptCheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(f"{path}: its metadata is a {type(metadata).__name__}, not a mapping")
    return metadata


def _standalone_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no memory (safetensors refuses views of one storage)."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(value).__name__}, not a tensor; put plain values in metadata")
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages or tensor.untyped_storage().nbytes() != tensor.nbytes:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


# ------------------------------------------------------------------------------------------- the conversion cache

CACHE_FORMAT = "reenact-converted/1"


@dataclass(frozen=True)
class Converted:
    """A state dict taken out of a checkpoint, with the checkpoint's plain top-level entries."""

    state: dict[str, torch.Tensor]
    entries: dict[str, Any]  # e.g. {"w_plus": True, "num_layers_shift": 8, ...}; {} for a bare state dict
    source_sha256: str
    from_cache: bool


def load_converted(source: str | os.PathLike, cache: str | os.PathLike, key: str | None = None,
                   required_keys: tuple[str, ...] = (), sha256: str | None = None) -> Converted:
    """The state dict under `key` of the checkpoint `source` (`key=None`: the file is a bare state dict).

    Read from the safetensors copy `cache` while it is current; otherwise the source is checked (its sha256 against
    `sha256` when given, its `required_keys`), read safely and converted, and the copy is (re)written.
    """
    source, cache = Path(source), Path(cache)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint not found: {source}")
    stat = source.stat()
    record = _current_record(cache, source, stat, key)
    if record is not None:
        check_sha256(source, record["source_sha256"], sha256)
        state, _ = load_safetensors(cache)
        if record["source_mtime_ns"] != stat.st_mtime_ns:  # same bytes, touched or copied: skip hashing next time
            save_safetensors(state, cache, {**record, "source_mtime_ns": stat.st_mtime_ns})
        return Converted(state, record["entries"], record["source_sha256"], from_cache=True)

    digest = sha256_file(source)
    check_sha256(source, digest, sha256)
    state, entries = split_checkpoint(load_checkpoint(source), key, required_keys, source)
    try:
        save_safetensors(state, cache, {
            "format": CACHE_FORMAT, "source": source.name, "source_size": stat.st_size,
            "source_mtime_ns": stat.st_mtime_ns, "source_sha256": digest, "key": key, "entries": entries,
        })
    except OSError as error:  # a read-only weights folder still loads, only without the shortcut
        warnings.warn(f"could not write the converted copy {cache} ({error}); {source} will be converted on "
                      f"every load", stacklevel=2)
    return Converted(state, entries, digest, from_cache=False)


def split_checkpoint(checkpoint: Mapping[str, Any], key: str | None, required_keys: tuple[str, ...],
                     source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the state dict under `key`, the other top-level entries that are plain JSON data)."""
    expected = list(dict.fromkeys([*required_keys, *([key] if key else [])]))
    missing = [name for name in expected if name not in checkpoint]
    if missing:
        raise CheckpointKeysError(
            f"{source}: expected top-level keys {expected}, found {sorted(map(str, checkpoint))} "
            f"(missing {missing}). Is this the right file?"
        )
    state = checkpoint[key] if key else checkpoint
    described = f"entry {key!r} of {source}" if key else f"{source} (expected a bare state dict)"
    if not isinstance(state, Mapping):
        raise CorruptCheckpointError(f"{described} is a {type(state).__name__}, not a state dict")
    strays = [f"{name!r} ({type(value).__name__})" for name, value in state.items()
              if not isinstance(value, torch.Tensor)]
    if strays:
        raise CorruptCheckpointError(f"{described} has entries that are not tensors: {', '.join(strays[:5])}"
                                     + (f" and {len(strays) - 5} more" if len(strays) > 5 else ""))
    others = {str(name): value for name, value in checkpoint.items() if name != key} if key else {}
    entries = {}
    for name, value in others.items():
        try:
            entries[name] = _plain(value)
        except TypeError:  # tensors, optimiser states, Namespaces: not needed to build a network
            continue
    return dict(state), entries


def _plain(value: Any) -> Any:
    """`value` as JSON data (numpy scalars become Python numbers); TypeError when it is not plain data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping) and all(isinstance(name, str) for name in value):
        return {name: _plain(item) for name, item in value.items()}
    raise TypeError(f"{type(value).__name__} is not plain data")


def _current_record(cache: Path, source: Path, stat: os.stat_result, key: str | None) -> dict[str, Any] | None:
    """The cache's metadata when the cache still describes `source`, else None."""
    if not cache.is_file():
        return None
    try:
        record = read_safetensors_metadata(cache)
    except CorruptCheckpointError:  # a damaged copy is simply rebuilt
        return None
    if record.get("format") != CACHE_FORMAT or record.get("key") != key or record.get("source_size") != stat.st_size:
        return None
    if record.get("source_mtime_ns") == stat.st_mtime_ns:
        return record
    return record if sha256_file(source) == record.get("source_sha256") else None


def check_sha256(source: Path, actual: str, expected: str | None) -> None:
    """Raise `CorruptCheckpointError` when an expected sha256 is given and `actual` is another."""
    if expected and actual != expected.lower():
        raise CorruptCheckpointError(
            f"{source}: sha256 {actual} differs from the expected {expected}; the file is damaged or another version"
        )
