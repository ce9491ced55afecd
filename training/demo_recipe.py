"""The bundled demo set's recipe, stage by stage, with torch alone: each stage resumes, so stages can run on
different days and machines, e.g. a CUDA machine that has torch, pydantic and zarr but no Prefect, PyAV or dlib.

    python -m training.demo_recipe --work DIR --stage world                   the training world, straight into a store
    python -m training.demo_recipe --work DIR --stage generator --minutes 8   G for at most 8 minutes (again: resumes)
    python -m training.demo_recipe --work DIR --stage encoder | encode | directions | feature-transformer
    python -m training.demo_recipe --work DIR --stage heldout                 held-out figures (the full environment)
    python -m training.demo_recipe --work DIR --stage all --configs gpu       every stage in order, the GPU sizes
    python -m training.demo_recipe --work DIR --pack OUT --stage generator    a stage's resume state, in parts
    python -m training.demo_recipe --work DIR --unpack IN                     ... put back into DIR

Stages and what each leaves in `DIR` (`--configs cpu` reads training/configs/demo-<stage>.yaml, `gpu` reads
demo-gpu-<stage>.yaml; `key=value` arguments override the running stage's config):

    world                world.zarr (crops, true landmarks, boxes) and world/truth.parquet
    generator            train-generator/ (a GAN; its export generator.safetensors)
    encoder              train-encoder/ (with decoder_lr also G refined as the encoder's decoder)
    encode               weights/demo/{generator,encoder}.safetensors; world.zarr's face3d/ (synth-regressor) and
                         inversion/ stages and ranges-synth-regressor.npy
    directions           train-directions/, weights/demo/directions.safetensors
    feature-transformer  train-feature-transformer/, weights/demo/feature_transformer.safetensors
    heldout              heldout/, heldout.zarr, heldout-evaluation/ (`flows.train_demo_weights.heldout_evaluation`:
                         the held-out world through video and preprocess-dataset, evaluated with dlib: it needs
                         Prefect, PyAV and dlib, and runs where they are installed)

Every stage also (re)writes weights/demo/provenance.json from what the work folder holds: each stage's config,
steps, speed and losses, the worlds, the held-out figures once measured, the files' sha256 and the machine, with
the work folder's paths written as `<work>/...` and the checkout's as `<repo>/...`, as they are in the training
config that each installed file's metadata carries.

The world stage renders the world of demo[-gpu]-world.yaml with `models.synth` and crops each frame as
preprocess-dataset does (`models.detect.align`: the paper's crop of the 68 landmarks, boxes smoothed over time),
but from the renderer's true landmarks: no video, no detector. A clip is written whole or not at all and skipped
when already there with the same plan. Crops differ from the video path's by the codec and by the detector's
landmark error (`tests/training/test_demo_recipe.py` measures it).

Resume across machines: `--pack OUT` writes a stage's run folder without its older checkpoints, the latest one
with weights in fp16 and optimiser moments in bf16 (rounded once per transfer: far below what one training step
changes), as a tar cut into parts of at most 15 MiB (what a GPU session can hand back); `--unpack IN` restores it,
fp32 again, and the stage continues from there.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch

from models.detect.align import crop_faces, crop_box, landmarks_to_crop, smooth_boxes
from models.synth.head import head_geometry, landmarks_3d, sample_identity
from models.synth.render import project, render
from models.synth.world import FPS, ClipPlan, SynthConfig, plan_world, truth_columns
from storage.checkpoints import load_safetensors, save_safetensors
from storage.encoding import EncodeConfig, encode_clip, measure_ranges
from storage.files import atomic_path, copy_whole, sha256_file
from storage.settings import PROJECT_ROOT
from storage.store import ClipKey, ClipStore
from storage.weights import BUNDLED_DIR, WEIGHT_FILES, WEIGHT_SETS
from training.common.checkpoints import RunDir, latest_checkpoint, read_checkpoint
from training.common.config import TrainingConfig, load_config
from training.common.loop import TrainingSummary, read_summary
from training.directions import DirectionsTrainingConfig, train_directions
from training.encoder import EncoderTrainingConfig, train_encoder
from training.feature_transformer import FeatureTransformerTrainingConfig, train_feature_transformer
from training.generator import GeneratorTrainingConfig, train_generator

CONFIGS = PROJECT_ROOT / "training" / "configs"
CONFIG_SETS = {"cpu": "demo-{stage}.yaml", "gpu": "demo-gpu-{stage}.yaml"}
HELDOUT_WORLD = SynthConfig(identities=6, videos_per_identity=1, clips_per_video=1, min_seconds=2, max_seconds=2,
                            seed=2)
TRAINING_STAGES = ("generator", "encoder", "directions", "feature-transformer")
STAGES = ("world", "generator", "encoder", "encode", "directions", "feature-transformer", "heldout")
PROVENANCE = "provenance.json"
CROP_SIZE = 256
BOX_SMOOTHING = 2.0  # preprocess-dataset's default sigma (frames) of the crop boxes
RENDER_BATCH = 32  # frames rendered at once
CHUNK_MARGIN_S = 30  # seconds kept for building the stage, the last checkpoint and the export
PART_BYTES = 15 * 2**20  # a packed part: under the 16 MiB a GPU session hands back per file
WORLD_SOURCE = "synthetic world, rendered straight into the store (true landmarks)"


@dataclass(frozen=True)
class StageSpec:
    """A training stage: its config class, the function that trains (or resumes) it, its name in provenance.json."""

    config: type[TrainingConfig]
    train: Callable[..., TrainingSummary]
    provenance: str  # its name in provenance.json, and its export's: <run>/<provenance>.safetensors


SPECS = {
    "generator": StageSpec(config=GeneratorTrainingConfig, train=train_generator, provenance="generator"),
    "encoder": StageSpec(config=EncoderTrainingConfig, train=train_encoder, provenance="encoder"),
    "directions": StageSpec(config=DirectionsTrainingConfig, train=train_directions, provenance="directions"),
    "feature-transformer": StageSpec(config=FeatureTransformerTrainingConfig, train=train_feature_transformer,
                                     provenance="feature_transformer"),
}


# ------------------------------------------------------------------------------------------------ the work folder

class Work:
    """Where a recipe keeps everything, and the config set it runs with."""

    def __init__(self, root: str | os.PathLike, configs: str = "cpu"):
        if configs not in CONFIG_SETS:
            raise ValueError(f"unknown config set {configs!r}: choose {', '.join(CONFIG_SETS)}")
        self.root, self.configs = Path(root), configs
        self.store = self.root / "world.zarr"
        self.truth = self.root / "world" / "truth.parquet"
        self.weights = self.root / "weights"

    def config_file(self, stage: str) -> Path:
        return CONFIGS / CONFIG_SETS[self.configs].format(stage=stage)

    def run(self, stage: str) -> Path:
        return self.root / f"train-{stage}"

    def world_config(self, overrides: list[str] = ()) -> SynthConfig:
        """demo[-gpu]-world.yaml, then `overrides` (key=value)."""
        return load_config(SynthConfig, self.config_file("world"), list(overrides))

    def stage_config(self, stage: str, overrides: list[str] = ()) -> TrainingConfig:
        """demo[-gpu]-<stage>.yaml with this work folder's store, run folder and inputs, then `overrides`."""
        settings = [f"store={self.store}", f"out={self.run(stage)}", *self._inputs(stage), *overrides]
        return load_config(SPECS[stage].config, self.config_file(stage), settings)

    def _inputs(self, stage: str) -> list[str]:
        """The earlier stages' outputs a stage reads."""
        if stage == "encoder":
            return [f"generator={self.run('generator') / 'generator.safetensors'}"]
        if stage == "directions":
            return [f"generator={self.weights / WEIGHT_FILES['demo-generator'].filename}",
                    f"weights_dir={self.weights}"]
        if stage == "feature-transformer":
            return [f"generator={self.weights / WEIGHT_FILES['demo-generator'].filename}",
                    f"directions={self.weights / WEIGHT_FILES['demo-directions'].filename}",
                    f"weights_dir={self.weights}"]
        return []

    def installed(self, name: str) -> Path:
        return self.weights / WEIGHT_FILES[name].filename

    def provenance(self) -> Path:
        return self.weights / "demo" / PROVENANCE


# ------------------------------------------------------------------------------------------------------- world

def write_world(work: Work, config: SynthConfig | None = None, workers: int = 1) -> dict[str, Any]:
    """The training world rendered straight into `work.store` and its truth into `work.truth`; clips already
    written with the same plan are skipped. Returns counts."""
    config = config or work.world_config()
    plans = plan_world(config)
    store = ClipStore.open(work.store)
    store.clean_staging()
    todo = [plan for plan in plans if not _world_clip_done(store, plan, config)]
    started = time.perf_counter()
    if todo:
        print(f"world: {len(todo)} of {len(plans)} clips to render into {work.store} ({workers} process(es))",
              flush=True)
        if workers > 1:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                                     initargs=(1,)) as pool:
                for done, _ in enumerate(pool.map(write_world_clip, todo, [str(work.store)] * len(todo),
                                                  [config] * len(todo)), 1):
                    _progress("world", done, len(todo), started)
        else:
            for done, plan in enumerate(todo, 1):
                write_world_clip(plan, str(work.store), config)
                _progress("world", done, len(todo), started)
    if not work.truth.is_file() or todo:
        import pandas as pd  # here only: the truth table is the one part of the world that needs it

        table = pd.concat([pd.DataFrame(truth_columns(plan)) for plan in plans], ignore_index=True)
        work.truth.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(work.truth) as partial:
            table.to_parquet(partial, index=False)
    frames = sum(plan.frames for plan in plans)
    return {"clips": len(plans), "rendered": len(todo), "frames": frames,
            "seconds": round(time.perf_counter() - started, 1)}


def _world_clip_done(store: ClipStore, plan: ClipPlan, config: SynthConfig) -> bool:
    key = ClipKey(plan.identity, plan.video, plan.clip)
    return store.has(key) and store.attrs(key).get("fingerprint") == plan.fingerprint(config)


def true_landmarks(plan: ClipPlan) -> np.ndarray:
    """The clip's 68 landmarks [T, 68, 2] in frame pixels, as the renderer draws them (no rendering needed)."""
    params = plan.params()
    geometry = head_geometry(sample_identity(plan.identity_seed))
    return project(landmarks_3d(geometry, params[:, 3], params[:, 4:]), params)


def world_crops(plan: ClipPlan, batch: int = RENDER_BATCH):
    """The clip as preprocess-dataset would crop it from its true landmarks: (boxes [T, 4], crop landmarks
    [T, 68, 2], and an iterator of uint8 crop batches [B, 256, 256, 3])."""
    params, identity = plan.params(), sample_identity(plan.identity_seed)
    landmarks = true_landmarks(plan)
    boxes = smooth_boxes(crop_box(landmarks), BOX_SMOOTHING)

    def batches():
        for start in range(0, plan.frames, batch):
            yield crop_faces(render(identity, params[start:start + batch]), boxes[start:start + batch], CROP_SIZE)

    return boxes, landmarks_to_crop(landmarks, boxes, CROP_SIZE), batches()


def write_world_clip(plan: ClipPlan, store_path: str, config: SynthConfig) -> str:
    """Render, crop and publish one clip (the store's layout of preprocess-dataset, every frame with its face)."""
    store = ClipStore.open(store_path)
    key = ClipKey(plan.identity, plan.video, plan.clip)
    boxes, landmarks, batches = world_crops(plan)
    with store.write_clip(key) as clip:
        crops = clip.create("crops", (plan.frames, CROP_SIZE, CROP_SIZE, 3), "uint8")
        start = 0
        for batch in batches:
            crops[start:start + len(batch)] = batch
            start += len(batch)
        clip.put("landmarks", landmarks.astype(np.float32))
        clip.put("boxes", boxes.astype(np.float32))
        clip.put("has_face", np.ones(plan.frames, bool))
        clip.put("faces", np.ones(plan.frames, np.uint8))
        clip.set_attrs(source_path=None, source=WORLD_SOURCE, fingerprint=plan.fingerprint(config),
                       world=config.model_dump(), plan={**plan.__dict__}, fps=FPS, frames=plan.frames,
                       config={"fps": FPS, "crop_size": CROP_SIZE, "box_smoothing": BOX_SMOOTHING},
                       faces_max=1, frames_without_face=0, landmarks_space="crop pixels",
                       boxes_space="source-frame pixels, square x0 y0 x1 y1")
    return str(key)


def _progress(what: str, done: int, total: int, started: float) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"{what}: {done}/{total} in {time.perf_counter() - started:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------- training stages

def train_stage(work: Work, stage: str, overrides: list[str] = (), minutes: float | None = None) -> TrainingSummary:
    """Train (or resume) one stage to its config's steps, or for at most `minutes` (then a checkpoint: the next
    call continues), and install its export where the later stages and the registry look."""
    config = work.stage_config(stage, list(overrides))
    train = SPECS[stage].train
    if minutes is None:
        summary = train(config)
    else:  # a first chunk measures the speed, then as many steps as the time left allows (each run ends checkpointed)
        deadline = time.monotonic() + 60 * minutes
        summary = train(config, stop_after=config.checkpoint_every)
        while summary.steps < config.steps:
            steps = int(summary.steps_per_second * (deadline - time.monotonic() - CHUNK_MARGIN_S) * 0.9)
            if steps < 1:
                break
            summary = train(config, stop_after=steps)
    if summary.steps >= config.steps:
        install_stage(work, stage)
    else:
        print(f"{stage}: step {summary.steps} of {config.steps}; run the stage again to continue", flush=True)
    return summary


def export_of(work: Work, stage: str) -> Path:
    return work.run(stage) / f"{SPECS[stage].provenance}.safetensors"


def stage_finished(work: Work, stage: str) -> bool:
    """The stage's run reached its config's steps and exported (whatever machine ran it)."""
    run = RunDir(work.run(stage))
    if not (run.summary.is_file() and run.config.is_file() and export_of(work, stage).is_file()):
        return False
    return read_summary(run).steps >= json.loads(run.config.read_text())["steps"]


def install_stage(work: Work, stage: str) -> None:
    """A finished stage's export into `work.weights` under the demo set's names (each file replaced whole): the
    encoder stage installs the encoder and G (its decoder with decoder_lr, else the GAN it inverted)."""
    if stage == "encoder":
        decoder = work.run("encoder") / "generator.safetensors"
        install_export(work, decoder if decoder.is_file() else export_of(work, "generator"), "demo-generator")
        install_export(work, export_of(work, "encoder"), "demo-encoder")
    elif stage == "directions":
        install_export(work, export_of(work, "directions"), "demo-directions")
    elif stage == "feature-transformer":
        install_export(work, export_of(work, "feature-transformer"), "demo-feature-transformer")


def install_export(work: Work, export: Path, name: str) -> Path:
    """`export` as the set's file `name`, the same tensors, the paths in its metadata (the training config) written
    as in provenance (`<work>/...`): a bundled file names no folder of the machine that made it."""
    state, metadata = load_safetensors(export)
    save_safetensors(state, work.installed(name), symbolic_paths(metadata, path_places(work)))
    return work.installed(name)


def encode_world(work: Work, batch_size: int = 32) -> dict[str, Any]:
    """synth-regressor parameters and the installed demo encoder's W+ of every frame of the world (stages already
    written with the same settings are skipped), then the ranges table."""
    store = ClipStore.open(work.store, create=False)
    store.clean_staging()
    config = EncodeConfig(face3d="synth-regressor", encoder="demo-encoder", weights_dir=str(work.weights),
                          batch_size=batch_size)
    keys, started = store.clips(), time.perf_counter()
    rows = []
    for done, key in enumerate(keys, 1):
        rows.append(encode_clip(key, store, config))
        _progress("encode", done, len(keys), started)
    failed = [f"{row['identity']}/{row['video']}/{row['clip']}: {row['error']}" for row in rows
              if row["status"] == "failed"]
    if failed:
        raise RuntimeError(f"encoding failed for {len(failed)} clips, e.g. {failed[0]}")
    path, _ = measure_ranges(store, config.face3d)
    return {"clips": len(rows), "encoded": sum(row["status"] == "ok" for row in rows), "ranges": str(path),
            "seconds": round(time.perf_counter() - started, 1)}


# ------------------------------------------------------------------------------------------------ provenance

def symbolic_paths(value: Any, places: dict[str, str]) -> Any:
    """`value` (JSON-like) with every string that is a path inside one of `places` (a folder as written, absolute
    or relative -> its symbol) written from that symbol, e.g. '<work>/world.zarr'; other strings unchanged."""
    if isinstance(value, dict):
        return {key: symbolic_paths(item, places) for key, item in value.items()}
    if isinstance(value, list):
        return [symbolic_paths(item, places) for item in value]
    if isinstance(value, str):
        for place, symbol in places.items():
            if value == place or value.startswith(place.rstrip("/") + "/"):
                return symbol + value[len(place.rstrip("/")):]
    return value


def path_places(work: Work) -> dict[str, str]:
    """The folders provenance names symbolically, each as it may be written (the most specific first)."""
    places = {str(work.root): "<work>", str(work.root.resolve()): "<work>", os.path.abspath(work.root): "<work>",
              str(PROJECT_ROOT): "<repo>"}
    return dict(sorted(places.items(), key=lambda item: -len(item[0])))


def stage_record(summary: TrainingSummary) -> dict[str, Any]:
    return {"config": json.loads((Path(summary.out) / "config.json").read_text()), "steps": summary.steps,
            "seconds_this_run": round(summary.seconds, 1), "steps_per_second": round(summary.steps_per_second, 3),
            "final_losses": summary.final_losses}


def machine() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def write_provenance(work: Work, heldout: dict[str, Any] | None = None,
                     world: dict[str, Any] | None = None) -> Path:
    """weights/demo/provenance.json from the work folder: the stages finished so far (each with the machine that
    ran it last), the worlds, the held-out figures (kept from the previous file unless given), the installed
    files' sha256; paths as `<work>/...` and `<repo>/...`."""
    path = work.provenance()
    previous = json.loads(path.read_text()) if path.is_file() else {}
    stages = dict(previous.get("stages", {}))
    for stage, spec in SPECS.items():
        run = RunDir(work.run(stage))
        if run.summary.is_file():
            summary = read_summary(run)
            if summary.seconds or spec.provenance not in stages:  # a rerun that trained nothing keeps the record
                stages[spec.provenance] = {**stage_record(summary), "machine": machine()}
    record: dict[str, Any] = {
        "recipe": "training/demo_recipe.py (reenact train-demo-weights; python -m training.demo_recipe)",
        "configs": work.configs,
        "training_world": world or previous.get("training_world") or work.world_config().model_dump(),
        "heldout_world": HELDOUT_WORLD.model_dump(),
        "stages": stages,
        "heldout": heldout if heldout is not None else previous.get("heldout"),
        "files": {name: {"file": WEIGHT_FILES[name].filename, "bytes": work.installed(name).stat().st_size,
                         "sha256": sha256_file(work.installed(name))}
                  for name in WEIGHT_SETS["demo"] if work.installed(name).is_file()},
        "machine": machine(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(symbolic_paths(record, path_places(work)), indent=2) + "\n")
    return path


def install_bundle(work: Work) -> Path:
    """The set and its provenance into models/data/demo (each file replaced whole)."""
    target = BUNDLED_DIR / "demo"
    for path in sorted((work.weights / "demo").iterdir()):
        copy_whole(path, target / path.name)
    return target


# -------------------------------------------------------------------------------------------- pack and unpack

def pack(work: Work, stage: str, out: str | os.PathLike, part_bytes: int = PART_BYTES) -> list[Path]:
    """A training stage's run folder (config, stats, summary, exports, samples, and its latest checkpoint, slimmed:
    an unfinished stage continues from it, a finished one can train longer) as `<out>/<stage>.tar.partNN` files of
    at most `part_bytes`."""
    run = RunDir(work.run(stage))
    latest = latest_checkpoint(run)
    if latest is None and not stage_finished(work, stage):
        raise FileNotFoundError(f"{run.root} has no checkpoint to pack: run the {stage} stage first")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(run.root.rglob("*")):
            relative = path.relative_to(work.root)
            if path.is_dir() or run.checkpoints in path.parents or run.tensorboard in path.parents:
                continue
            tar.add(path, arcname=relative.as_posix())
        if latest is not None:
            slim = io.BytesIO()
            torch.save(_cast_floats(read_checkpoint(latest), narrow=True), slim)
            info = tarfile.TarInfo(latest.relative_to(work.root).as_posix())
            info.size = slim.tell()
            slim.seek(0)
            tar.addfile(info, slim)
    data, out = buffer.getvalue(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for number, start in enumerate(range(0, len(data), part_bytes)):
        part = out / f"{stage}.tar.part{number:02d}"
        with atomic_path(part) as partial:
            partial.write_bytes(data[start:start + part_bytes])
        parts.append(part)
    return parts


def unpack(work: Work, source: str | os.PathLike) -> list[str]:
    """Every `<stage>.tar.partNN` set in `source` restored into the work folder (checkpoints back in fp32); a
    finished stage's exports are installed as the stage itself installs them."""
    restored = []
    for first in sorted(Path(source).glob("*.tar.part00")):
        stage = first.name.removesuffix(".tar.part00")
        data = b"".join(path.read_bytes() for path in sorted(first.parent.glob(f"{stage}.tar.part*")))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            for member in tar.getmembers():
                target = work.root / member.name
                if work.root.resolve() not in target.resolve().parents:
                    raise ValueError(f"{first}: {member.name} leaves the work folder")
                content = tar.extractfile(member).read()
                if target.suffix == ".pt":
                    checkpoint = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
                    buffer = io.BytesIO()
                    torch.save(_cast_floats(checkpoint, narrow=False), buffer)
                    content = buffer.getvalue()
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as partial:
                    partial.write_bytes(content)
        if stage_finished(work, stage):
            install_stage(work, stage)
        restored.append(stage)
    return restored


MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # Adam's per-parameter state that packing narrows


def _cast_floats(checkpoint: dict[str, Any], narrow: bool) -> dict[str, Any]:
    """A checkpoint with its networks' floating tensors in fp16 and its optimisers' moments in bf16 (the second
    moments span too wide a range for fp16), or (narrow False) those back in fp32. Everything else (steps, RNG
    states, the ranges table, ADA's state) stays as it is."""
    def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor
        return tensor.to(dtype) if narrow else tensor.float()

    out = dict(checkpoint)
    for key, value in checkpoint.items():
        if key in checkpoint.get("networks", {}):
            out[key] = {name: cast(tensor, torch.float16) for name, tensor in value.items()}
        elif isinstance(value, dict) and {"state", "param_groups"} <= set(value):
            state = {index: {name: cast(item, torch.bfloat16) if name in MOMENTS else item
                             for name, item in entries.items()} for index, entries in value["state"].items()}
            out[key] = {**value, "state": state}
    return out


# -------------------------------------------------------------------------------------------------- the command

def heldout(work: Work) -> dict[str, Any]:
    """The held-out figures of the work folder's set (needs Prefect, PyAV and dlib: the flows' environment)."""
    try:
        from flows.train_demo_weights import heldout_evaluation, heldout_figures, self_reenactment_error
    except ImportError as err:
        raise SystemExit(f"the heldout stage evaluates through the video pipeline and dlib, which this environment "
                         f"lacks ({err}); copy the work folder's weights/ to a machine with the project's full "
                         "environment and run the stage there") from err
    figures = heldout_figures(heldout_evaluation(work.root, str(work.weights)))
    return {**figures, **self_reenactment_error(work.root / "heldout.zarr", str(work.weights))}


def run(work: Work, stage: str, overrides: list[str] = (), minutes: float | None = None,
        workers: int = 1) -> dict[str, Any]:
    """One stage (see the module docstring); returns what it reports."""
    if stage == "world":
        config = work.world_config(overrides)
        world = write_world(work, config, workers)
        write_provenance(work, world={**config.model_dump(), "written": "directly (true landmarks)",
                                      "frames": world["frames"]})
        return world
    if stage == "encode":
        for name in ("demo-generator", "demo-encoder"):
            if not work.installed(name).is_file():
                raise FileNotFoundError(f"{work.installed(name)} is missing: finish the encoder stage first")
        report = encode_world(work)
    elif stage == "heldout":
        report = heldout(work)
        write_provenance(work, heldout=report)
        return report
    else:
        report = train_stage(work, stage, overrides, minutes).model_dump()
    write_provenance(work)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="the recipe's work folder (created when missing)")
    parser.add_argument("--stage", choices=[*STAGES, "all"], help="the stage to run (all: every one in order but "
                        "heldout); with --pack, the stage to pack")
    parser.add_argument("--configs", choices=list(CONFIG_SETS), default="cpu",
                        help="config set: cpu (demo-<stage>.yaml, the bundled set's) or gpu (demo-gpu-<stage>.yaml)")
    parser.add_argument("--minutes", type=float, help="train for at most this long, then checkpoint (rerun to go on)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the world")
    parser.add_argument("--pack", metavar="OUT", help="write the stage's resume state to OUT in parts")
    parser.add_argument("--unpack", metavar="IN", help="restore packed stages from IN into the work folder")
    parser.add_argument("overrides", nargs="*", help="key=value settings over the stage's config file")
    arguments = parser.parse_args(argv)
    work = Work(arguments.work, arguments.configs)
    work.root.mkdir(parents=True, exist_ok=True)
    if arguments.unpack:
        print(f"unpacked: {', '.join(unpack(work, arguments.unpack)) or 'nothing'}", flush=True)
    if arguments.stage is None:
        if not arguments.unpack:
            parser.error("give --stage (or --unpack)")
        return
    if arguments.pack:
        if arguments.stage not in SPECS:
            parser.error(f"--pack takes a training stage: {', '.join(SPECS)}")
        for part in pack(work, arguments.stage, arguments.pack):
            print(f"packed: {part} ({part.stat().st_size} bytes)", flush=True)
        return
    stages = [stage for stage in STAGES if stage != "heldout"] if arguments.stage == "all" else [arguments.stage]
    for stage in stages:
        started = time.perf_counter()
        report = run(work, stage, arguments.overrides if stage in (*SPECS, "world") else [], arguments.minutes,
                     arguments.workers)
        print(f"{stage}: {time.perf_counter() - started:.0f} s: {json.dumps(report, default=str)[:2000]}", flush=True)
        if stage in SPECS and report["steps"] < work.stage_config(stage, arguments.overrides).steps:
            break  # out of time: the later stages need this one finished


if __name__ == "__main__":
    sys.exit(main())
