"""One config object per training stage: a pydantic model read from a YAML or JSON file plus `key=value` overrides
(dotted keys reach nested fields, values are read as YAML scalars), printed when a run starts and saved beside its
checkpoints, as NVlabs' training runs keep their options next to their snapshots."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from storage.files import atomic_path

Precision = Literal["fp32", "bf16", "fp16"]
WeightsDtype = Literal["fp32", "fp16", "bf16"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
C = TypeVar("C", bound="TrainingConfig")


class TrainingConfig(BaseModel):
    """The settings every stage has: data, run directory, schedule of checkpoints and logs, devices, precision."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field("outputs/synthetic.zarr", description="The Zarr clip store whose crops are the training data.")
    clips: list[str] | None = Field(None, description="Only these clips (identity/video/clip); default: every clip.")
    faces_only: bool = Field(True, description="Skip frames where preprocessing found no face (has_face false).")
    out: str = Field("outputs/train", description="Run directory: config.json, checkpoints/, tensorboard/, samples/, stats.jsonl.")
    steps: int = Field(10_000, ge=1, description="Optimiser steps of the whole run (a resumed run continues to this).")
    batch_size: int = Field(16, ge=1, description="Images per step and process (the global batch is this times the processes).")
    seed: int = Field(0, description="Seed of weights, noise and data order; a resumed run restores the RNG states instead.")
    resume: bool = Field(True, description="Continue from the latest checkpoint in `out` when there is one.")
    checkpoint_every: int = Field(1000, ge=1, description="Steps between checkpoints (the last step always writes one).")
    keep_checkpoints: int = Field(3, ge=0, description="Checkpoints kept (the newest); 0 keeps all.")
    log_every: int = Field(50, ge=1, description="Steps per logged mean of the losses (stats.jsonl, TensorBoard, log line).")
    image_every: int = Field(500, ge=1, description="Steps between image grids (TensorBoard and samples/*.png).")
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'; under torchrun each process takes cuda:LOCAL_RANK.")
    precision: Precision = Field("fp32", description="Autocast of the main passes: fp32, bf16, or fp16 with a gradient scaler (regularisers stay fp32).")
    compile: bool = Field(False, description="torch.compile the networks' main forward passes (CUDA only; ignored on CPU).")
    workers: int = Field(2, ge=0, description="DataLoader worker processes reading the store (0: in the training process).")
    chunk_block: int = Field(8, ge=0, description="Store chunks whose frames are shuffled together (each chunk is decoded once per epoch); 0: shuffle all frames.")
    cache_chunks: int = Field(32, ge=1, description="Decoded chunks each data process keeps.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads of the training process (default: torch's).")
    export_dtype: WeightsDtype = Field("fp16", description="Precision of the final exported safetensors (checkpoints stay fp32).")

    def device_for(self, local_rank: int = 0) -> torch.device:
        """The training device of the process with this local rank."""
        wanted = self.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(wanted)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["steps=100", "ada.target=0.6", "clips=[a/b/c]"]` -> nested dict; each value is read as YAML."""
    result: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        *parents, leaf = key.strip().split(".")
        target = result
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = plain_yaml(text, f"override {item!r}") if text.strip() else None
    return result


def plain_yaml(text: Any, source: str) -> Any:
    """YAML (or JSON) as plain data: `yaml.safe_load` builds numbers, strings, lists and mappings only; a tag that
    would build a Python object (`!!python/object/apply:os.system`) is refused, with nothing built or run."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as error:
        raise ValueError(f"{source}: {error.problem} (line {error.problem_mark.line + 1 if error.problem_mark else '?'}"
                         f"); config files hold plain values (numbers, strings, lists, mappings), never Python "
                         f"objects: remove the tag") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{source} is not valid YAML or JSON: {error}") from None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's fields: YAML or JSON (JSON is YAML too), an empty file being no fields."""
    with open(path) as handle:
        data = plain_yaml(handle, str(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds a mapping of field names to values")
    return data


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> C:
    """The stage's config from `path` (optional) with `overrides` on top; unknown fields are refused."""
    fields = read_config_file(path) if path else {}
    return cls.model_validate(_merge(fields, parse_overrides(overrides)))


def config_text(config: BaseModel) -> str:
    """The resolved config as the run prints it and saves it."""
    return json.dumps(config.model_dump(mode="json"), indent=2)


def save_config(config: BaseModel, path: Path) -> None:
    with atomic_path(path) as partial:
        partial.write_text(config_text(config) + "\n")


def command_line(argv: Sequence[str], description: str | None = None) -> tuple[str | None, list[str]]:
    """`[--config FILE] [key=value ...]` -> (FILE, overrides): the stage modules' command line under torchrun."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML or JSON file of the stage's config fields")
    parser.add_argument("overrides", nargs="*", help="key=value settings over the file's")
    arguments = parser.parse_args(list(argv))
    return arguments.config, arguments.overrides
