"""Checking a clip store against the checksums recorded when each clip was published, and healing what fails.

A damaged clip is preprocessed again from its source with the config recorded in the clip (or in its manifest row
when the clip's metadata is unreadable); when the source is gone it is marked failed in the manifest. A clip whose
own arrays are whole but one of whose later stages is damaged loses that stage, so encode-dataset computes it again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from storage.inputs import ClipSource
from storage.manifest import finish_row, is_missing, read_manifest, record_row
from storage.store import ClipDataError, ClipKey, ClipStore
from tasks.preprocess import PreprocessConfig, preprocess_clip

MISSING = "not in the store, though the manifest says it was made"


class ClipReport(BaseModel):
    """One clip that failed the check: what is wrong (each problem names the array and chunk) and, after a repair,
    what was done."""

    key: str
    problems: list[str]
    action: str | None = None
    repaired: bool = False


def verify_clips(store: ClipStore, keys: list[ClipKey], full: bool = True) -> list[ClipReport]:
    """Reports of the clips among `keys` that are incomplete, unreadable, or whose bytes changed."""
    reports = []
    for key in keys:
        problems = store.check(key, full=full)
        if not problems and full:
            try:
                clip = store.clip(key)  # opens with Zarr: metadata that parses but Zarr refuses shows here
                for stage in clip.stages:
                    clip.stage(stage)
            except (ClipDataError, ValueError, KeyError, OSError) as err:
                problems = [f"unreadable ({type(err).__name__}: {err})"]
        if problems:
            reports.append(ClipReport(key=str(key), problems=problems))
    return reports


@task(name="verify-clips", cache_policy=NO_CACHE, task_run_name="verify {keys[0]} and {count} more")
def verify_clips_task(store_path: str, keys: list[str], full: bool, count: int = 0) -> list[ClipReport]:
    return verify_clips(ClipStore.open(store_path, create=False), [ClipKey.parse(k) for k in keys], full)


def repair_clip(store: ClipStore, report: ClipReport) -> ClipReport:
    """Heal one damaged clip (see the module's docstring); its manifest row says what happened."""
    key = ClipKey.parse(report.key)
    own = [p for p in report.problems if not p.startswith("stage ")]
    if not own:
        stages = sorted({p.split(":")[0].removeprefix("stage ") for p in report.problems})
        for stage in stages:
            store.remove_stage(key, stage)
        return report.model_copy(update={"repaired": True, "action": (
            f"removed the damaged {', '.join(stages)} stage(s): run encode-dataset to compute them again")})
    source_path, config, names = _origin(store, key)
    if source_path is None or not Path(source_path).is_file():
        row = {"identity": key.identity, "video": key.video, "clip": key.clip, "source_path": source_path,
               "name": "/".join(names) if names else str(key),
               "config": config.model_dump_json(exclude={"batch_size"}) if config else None,
               "config_hash": config.config_hash() if config else None,
               "error": f"store-verify: {own[0]}{f' (and {len(own) - 1} more)' if len(own) > 1 else ''}; its source "
                        f"{source_path or '(not recorded)'} is gone, so it cannot be computed again"}
        record_row(store.manifest_path, finish_row(row, "failed", time.perf_counter()))
        return report.model_copy(update={"action": "marked failed in the manifest: its source is gone"})
    if config is None:
        return report.model_copy(update={"action": "cannot repair: no preprocessing config recorded for it (in the "
                                                   "clip or the manifest); run preprocess-dataset on its source"})
    row = preprocess_clip(ClipSource(key, Path(source_path), names=names), store, config, force=True)
    record_row(store.manifest_path, row)
    if row["status"] == "ok":
        return report.model_copy(update={"repaired": True, "action": f"preprocessed again from {source_path}"})
    return report.model_copy(update={"action": f"preprocessing it again failed: {row['error']}"})


@task(name="repair-clip", cache_policy=NO_CACHE, task_run_name="repair {report.key}")
def repair_clip_task(store_path: str, report: ClipReport) -> ClipReport:
    return repair_clip(ClipStore.open(store_path, create=False), report)


def _origin(store: ClipStore, key: ClipKey):
    """Source path, PreprocessConfig and input names of a clip: from its attrs, else from its manifest row."""
    try:
        attrs = store.attrs(key)
        config = PreprocessConfig(**attrs["config"])
        names = tuple(attrs["name"][part] for part in ("identity", "video", "clip")) if "name" in attrs else None
        return attrs.get("source_path"), config, names
    except (OSError, ValueError, KeyError, TypeError):
        pass
    manifest = read_manifest(store.manifest_path)
    rows = manifest[(manifest["identity"] == key.identity) & (manifest["video"] == key.video)
                    & (manifest["clip"] == key.clip)].to_dict("records")
    if not rows:
        return None, None, None
    row = rows[0]
    config = None if is_missing(row.get("config")) else PreprocessConfig(**json.loads(row["config"]))
    names = None if is_missing(row.get("name")) else tuple(str(row["name"]).split("/", 2))
    return (None if is_missing(row.get("source_path")) else row["source_path"]), config, names
