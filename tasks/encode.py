"""Prefect tasks of encode-dataset around the plain functions of `storage.encoding` (one clip's face3d/ and
inversion/ stages, the ranges table); the names below are re-exported for the flows and tasks that use them."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.encoding import (ENCODE_VERSION, FACE3D, INVERSION, STAGES, EncodeConfig, Encoders,  # noqa: F401
                              Stage, encode_clip, encoders_for, measure_ranges, ranges_path)
from storage.store import ClipKey, ClipStore


@task(name="encode-clip", cache_policy=NO_CACHE, task_run_name="encode {key}")
def encode_clip_task(key: ClipKey, store_path: str, config: EncodeConfig) -> dict:
    """Prefect task around `encode_clip`; takes the store's path so it can run in another process (Dask)."""
    return encode_clip(key, ClipStore.open(store_path, create=False), config)


@task(name="measure-ranges", cache_policy=NO_CACHE)
def measure_ranges_task(store_path: str, backend: str, quantiles: tuple[float, float] = (0.0, 1.0)) -> str:
    path, _ = measure_ranges(ClipStore.open(store_path, create=False), backend, quantiles)
    return str(path)
