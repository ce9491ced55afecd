"""The training loop every stage runs (`train`), and the small pieces the stages' steps share.

A stage (`Stage`) owns its networks, optimisers and losses and does one optimisation step at a time; the loop
does the rest the same way for all of them: join the torchrun group, seed, print and save the config, read the
store, resume from the latest checkpoint (weights, optimisers, gradient scalers, RNG states of every rank, the
stage's own counters, the position in the data order), step with a progress bar, log, draw image grids, write
checkpoints in the stage's official layout plus safetensors, export the final network and return a summary.

A run stopped after a checkpoint and resumed ends with the same weights as one that never stopped: everything
random is drawn from the checkpointed generators or from the (seed, epoch)-determined data order.

On a GPU a step never waits for the device: losses stay device tensors until a log window closes, batches come
from pinned memory without blocking, the moving average and Adam update all tensors of a network in one fused
call, and the log shows images/s and the share of time spent waiting for data (`Monitor`).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from storage.files import atomic_path
from training.common.checkpoints import (Export, RunDir, latest_checkpoint, read_checkpoint, rng_state,
                                         save_checkpoint, save_export, seed_everything, set_rng_state)
from training.common.config import DTYPES, TrainingConfig, config_text, save_config
from training.common.distributed import Distributed, close_distributed, init_distributed, launch
from training.common.monitor import Monitor
from training.data import StoreCrops, crop_batches, to_model_range


class TrainingSummary(BaseModel):
    """What a finished run hands back (and writes to <out>/summary.json)."""

    stage: str
    out: str
    start_step: int
    steps: int
    world_size: int
    seconds: float
    steps_per_second: float
    images_per_second: float
    first_losses: dict[str, float]  # the first logged window of this run
    final_losses: dict[str, float]  # the last logged window
    checkpoint: str  # the last .pt (official layout + resume state)
    weights: str  # its safetensors
    export: str  # <out>/<stage>.safetensors in export_dtype
    replicas_in_sync: bool | None = None  # every rank ended with the same weights (None: one process)
    last_window: dict[str, float] = {}  # speed of the last log window: steps_per_s, images_per_s, data_wait

    def lines(self) -> list[str]:
        """What a command line prints at the end."""
        losses = " ".join(f"{name}={value:.4f}" for name, value in self.final_losses.items())
        return [f"{self.stage}: steps {self.start_step}->{self.steps} on {self.world_size} process(es) in "
                f"{self.seconds:.1f} s ({self.steps_per_second:.2f} steps/s, {self.images_per_second:.1f} images/s)",
                f"losses:     {losses}", f"checkpoint: {self.checkpoint}", f"weights:    {self.export or self.weights}"]


# ------------------------------------------------------------------------------------------- shared step pieces

class Amp:
    """Autocast and gradient scaling for one precision on one device (fp32: both are no-ops)."""

    def __init__(self, precision: str, device: torch.device):
        self.device = device
        self.dtype = DTYPES[precision] if precision != "fp32" else None
        self.scaling = precision == "fp16"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler; enabled for fp16 only (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.scaling)


def optimise(loss: torch.Tensor, optimiser: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             parameters_of: nn.Module, also: torch.optim.Optimizer | None = None) -> None:
    """zero_grad, backward (scaled), step, update: one optimiser step on `loss` (and one of `also`, whose
    parameters the caller zeroed, on the same gradients)."""
    parameters_of.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimiser)
    if also is not None:
        scaler.step(also)
    scaler.update()


def requires_grad(module: nn.Module, flag: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, every parameter in one fused call (the same lerp per
    element as a loop over the parameters; buffers are not averaged)."""
    torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1 - decay)


def adam(parameters, device: torch.device, **options) -> torch.optim.Adam:
    """Adam with its fused kernel on CUDA (one launch for all tensors) and its default implementation elsewhere
    (so CPU runs are the same as ever)."""
    return torch.optim.Adam(parameters, fused=device.type == "cuda" or None, **options)


def maybe_compile(module: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """torch.compile(module) on CUDA when asked (same parameters, compiled forward); `module` otherwise. Passes
    that need a double backward (R1, path length) must call the uncompiled module."""
    if enabled and device.type == "cuda":
        return torch.compile(module)
    return module


# ------------------------------------------------------------------------------------------------- the stage

class Stage(ABC):
    """One training stage: networks, optimisers, one step, and what its checkpoint holds beyond those."""

    name: str  # "generator", "encoder": names the export and the progress bar

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Checkpointed state dicts, under their official keys ('g', 'd', 'g_ema'; 'e'), unwrapped from DDP."""

    @abstractmethod
    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        """Under their official keys ('g_optim', 'd_optim'; 'e_optim')."""

    @abstractmethod
    def scalers(self) -> dict[str, torch.amp.GradScaler]:
        ...

    @abstractmethod
    def train_step(self, step: int, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step (0-based `step`) on a batch in [-1, 1]; the losses to log, as tensors."""

    @abstractmethod
    def export(self) -> Export:
        """The network the run delivers (G's EMA, the encoder) and how to rebuild it."""

    def constructor_configs(self) -> dict[str, dict[str, Any]]:
        """Constructor arguments of the checkpointed networks, by key (the checkpoint's 'networks' entry)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Plain top-level checkpoint entries of the stage (ADA's 'ada_aug_p', ...)."""
        return {}

    def load_extra_state(self, checkpoint: Mapping[str, Any]) -> None:  # noqa: B027 (a hook: most stages keep nothing)
        pass

    def samples(self) -> dict[str, tuple[torch.Tensor, int]]:
        """Image grids to log: name -> (images in [-1, 1], images per row)."""
        return {}

    def scalars(self) -> dict[str, float]:
        """Values to log beside the losses (rank 0's)."""
        return {}


def train(build: Callable[[TrainingConfig, Distributed, StoreCrops], Stage], config: TrainingConfig,
          resolution: Callable[[TrainingConfig], int], stop_after: int | None = None,
          save: bool = True) -> TrainingSummary:
    """Run `config` to `config.steps` (or `stop_after` more steps: a planned interruption, checkpointed).

    `build(config, group, dataset)` makes the stage with fresh or initial weights; `resolution(config)` is the size
    the data is read at. `save=False` writes no checkpoint, export or image grid, only the loss and speed logs and
    the summary (a throughput measurement: benchmarks/gpu.py).
    """
    group = init_distributed(config.device_for)
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        return _train(build, config, resolution(config), group, stop_after, save)
    finally:
        torch.set_num_threads(threads)  # a run inside a longer process (a flow, the tests) leaves it as it was
        close_distributed(group)


def run_stage(module: str, train_stage: Callable[[TrainingConfig], TrainingSummary], config: TrainingConfig,
              processes: int = 1) -> TrainingSummary:
    """`train_stage(config)` in this process, or in `processes` torchrun processes of `python -m module` (rank 0
    writes the summary this returns); what the flows call."""
    if processes <= 1:
        return train_stage(config)
    run = RunDir(Path(config.out))
    run.root.mkdir(parents=True, exist_ok=True)
    path = run.root / "launch-config.json"
    save_config(config, path)
    launch(module, path, processes)
    return read_summary(run)


def _train(build, config: TrainingConfig, resolution: int, group: Distributed,
           stop_after: int | None, save: bool) -> TrainingSummary:
    run = RunDir(Path(config.out))
    dataset = StoreCrops(config.store, resolution, config.clips, config.faces_only, config.cache_chunks)
    seed_everything(config.seed)  # the same initial weights on every rank, whatever the number of ranks
    if group.main:
        print(f"training config:\n{config_text(config)}", flush=True)
        run.root.mkdir(parents=True, exist_ok=True)
        save_config(config, run.config)
    stage = build(config, group, dataset)
    seed_everything(rank_seed(config.seed, group.rank))  # then each rank draws its own noise

    start, resumed_losses = 0, {}
    latest = latest_checkpoint(run) if config.resume else None
    if latest is not None:
        state = read_checkpoint(latest)
        start, resumed_losses = resume(stage, state, group), dict(state.get("losses", {}))
        if group.main:
            print(f"resumed from {latest} (step {start})", flush=True)
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    batches = crop_batches(dataset, config.batch_size, config.seed, group.rank, group.world_size,
                           config.chunk_block, config.workers, start, group.device.type == "cuda")
    monitor = Monitor(run, group, stage.name, start, config.steps, config.log_every, config.batch_size)
    started = time.perf_counter()
    try:
        path = _steps(stage, batches, monitor, run, config, group, start, end, save) or latest
    finally:
        monitor.close()
        _close(batches)
    seconds = time.perf_counter() - started
    return _finish(stage, run, config, group, start, end, seconds, path, monitor, resumed_losses, save)


def _steps(stage: Stage, batches: Iterator[torch.Tensor], monitor: Monitor, run: RunDir, config: TrainingConfig,
           group: Distributed, start: int, end: int, save: bool = True) -> Path | None:
    """Steps start..end-1 with their logs, grids and checkpoints; returns the last checkpoint written."""
    path = None
    for step in range(start, end):
        waiting = time.perf_counter()
        batch = next(batches)
        monitor.waited(time.perf_counter() - waiting)
        monitor.add(stage.train_step(step, to_model_range(batch, group.device)))
        done = step + 1
        monitor.end_step(done)
        if save and (done % config.image_every == 0 or done == config.steps):
            for name, (grid, nrow) in stage.samples().items():
                monitor.images(name, grid, done, nrow)
            for name, value in stage.scalars().items():
                monitor.scalar(name, value, done)
        if save and (done % config.checkpoint_every == 0 or done == end):
            path = checkpoint(stage, run, config, done, group, monitor.last)
    return path


def _finish(stage: Stage, run: RunDir, config: TrainingConfig, group: Distributed, start: int, end: int,
            seconds: float, path: Path | None, monitor: Monitor, resumed_losses: dict,
            save: bool = True) -> TrainingSummary:
    """The final export (when the run reached `steps`) and the summary, written by rank 0 and returned."""
    trained = end - start
    in_sync = replicas_in_sync(stage, group)
    final = run.export(stage.name)
    # a run that reached `steps` exports; so does a resumed one whose final checkpoint has no export beside it
    if save and group.main and end == config.steps and (trained or not final.exists()):
        save_export(stage.export(), final, DTYPES[config.export_dtype],
                    {"training": config.model_dump(mode="json"), "step": end, "losses": monitor.last})
    summary = TrainingSummary(
        stage=stage.name, out=str(run.root), start_step=start, steps=end, world_size=group.world_size,
        seconds=round(seconds, 3), steps_per_second=trained / max(seconds, 1e-9),
        images_per_second=trained * config.batch_size * group.world_size / max(seconds, 1e-9),
        first_losses=monitor.first or {}, final_losses=monitor.last or resumed_losses,
        checkpoint=str(path or ""), weights=str(path.with_suffix(".safetensors")) if path else "",
        export=str(final) if final.exists() else "", replicas_in_sync=in_sync, last_window=monitor.speed)
    if group.main:
        with atomic_path(run.summary) as partial:
            partial.write_text(summary.model_dump_json(indent=2) + "\n")
    return summary


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's training streams: distinct per rank, and not the seed the weights were drawn with."""
    return int(np.random.SeedSequence([seed, rank, 1]).generate_state(1)[0])


def checkpoint(stage: Stage, run: RunDir, config: TrainingConfig, step: int, group: Distributed,
               losses: Mapping[str, float]):
    """Write step `step`'s checkpoint (every rank hands its RNG state to rank 0, which writes)."""
    states = group.gather(rng_state(group.device))
    path = run.checkpoint(step)
    if group.main:
        entries = {**{key: net.state_dict() for key, net in stage.networks().items()},
                   **{key: opt.state_dict() for key, opt in stage.optimisers().items()},
                   "scalers": {key: scaler.state_dict() for key, scaler in stage.scalers().items()},
                   "networks": stage.constructor_configs(), **stage.extra_state(),
                   "step": step, "config": config.model_dump(mode="json"), "rng": states, "losses": dict(losses)}
        save_checkpoint(run, step, entries, stage.export(),
                        {"training": config.model_dump(mode="json"), "losses": dict(losses)},
                        config.keep_checkpoints)
    group.barrier()
    return path


def resume(stage: Stage, checkpoint: Mapping[str, Any], group: Distributed) -> int:
    """Put a checkpoint's states back into the stage and this rank's generators; returns its step."""
    for key, net in stage.networks().items():
        net.load_state_dict(checkpoint[key], strict=True)
    for key, opt in stage.optimisers().items():
        opt.load_state_dict(checkpoint[key])
    for key, scaler in stage.scalers().items():
        if key in checkpoint.get("scalers", {}):
            scaler.load_state_dict(checkpoint["scalers"][key])
    stage.load_extra_state(checkpoint)
    states = checkpoint.get("rng") or []
    if len(states) == group.world_size:
        set_rng_state(states[group.rank], group.device)
    elif group.main:  # another number of processes: the run goes on, reproducible from here but not the same
        print(f"checkpoint has RNG states of {len(states)} processes, this run has {group.world_size}: reseeding",
              flush=True)
    return int(checkpoint["step"])


def replicas_in_sync(stage: Stage, group: Distributed) -> bool | None:
    """Whether every rank holds the same weights (DDP keeps them equal bit for bit; a difference is a bug)."""
    if not group.active:
        return None
    sums = [float(sum(p.detach().double().sum() for p in net.parameters())) for net in stage.networks().values()]
    gathered = group.gather(sums)
    return all(other == gathered[0] for other in gathered)


def _close(batches: Iterator) -> None:
    """Stop a DataLoader iterator's workers now rather than at garbage collection."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def read_summary(run: RunDir) -> TrainingSummary:
    return TrainingSummary.model_validate(json.loads(run.summary.read_text()))
