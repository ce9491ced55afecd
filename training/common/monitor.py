"""What a run shows while it trains: a progress bar with ETA, loss means per window in stats.jsonl and TensorBoard,
and image grids. Only rank 0 writes; every rank takes part in the cross-rank means, at the same steps.

Speed per window: steps/s and images/s, and the share of the window's wall time the training process spent
waiting for the next batch from the data loader (`data_wait`: near 0 when the loader keeps ahead; near 1 when
the step waits for data). Losses stay on the device until a window closes, so a step never waits for the device
for logging; the window's one read of the means is what makes its wall time true on a GPU."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from storage.files import atomic_path
from training.common.checkpoints import RunDir
from training.common.distributed import Distributed


def summary_writer(run: RunDir, start: int):
    """A TensorBoard writer that drops events logged after step `start` by an interrupted run (so a resumed run's
    curves do not overlap), or None (with one warning) when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: no TensorBoard events (stats.jsonl and samples/ still written)",
                      stacklevel=2)
        return None
    return SummaryWriter(str(run.tensorboard), purge_step=start + 1 if start else None)


def truncate_stats(run: RunDir, start: int) -> None:
    """Keep the stats.jsonl rows up to step `start`: a resumed run writes the later ones again."""
    if not run.stats.exists():
        return
    rows = [line for line in run.stats.read_text().splitlines() if line and json.loads(line)["step"] <= start]
    with atomic_path(run.stats) as partial:
        partial.write_text("".join(row + "\n" for row in rows))


class Monitor:
    """Loss means over windows of `log_every` steps, shown, logged and written; image grids on request."""

    def __init__(self, run: RunDir, group: Distributed, stage: str, start: int, steps: int, log_every: int,
                 images_per_step: int):
        self.run, self.group, self.stage = run, group, stage
        self.steps, self.log_every, self.images_per_step = steps, log_every, images_per_step
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.data_seconds = 0.0  # waiting for batches in this window
        self.speed: dict[str, float] = {}  # the last closed window's steps_per_s, images_per_s, data_wait
        self.window_start = time.perf_counter()
        self.started = self.window_start
        self.start_step = start
        self.last: dict[str, float] = {}
        self.first: dict[str, float] | None = None
        if group.main:
            truncate_stats(run, start)
        self.writer = summary_writer(run, start) if group.main else None
        # disable=None: a bar on a terminal, silent in CI and Prefect workers, where the log line below reports
        self.bar = tqdm(total=steps, initial=start, desc=stage, unit="step", dynamic_ncols=True,
                        disable=None if group.main else True)

    def add(self, losses: Mapping[str, torch.Tensor]) -> None:
        """One step's losses; kept on the device until the window ends (no sync per step)."""
        for name, value in losses.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1
        self.bar.update(1)

    def waited(self, seconds: float) -> None:
        """Time this step spent waiting for its batch."""
        self.data_seconds += seconds

    def end_step(self, step: int) -> None:
        """After step `step` (1-based): close the window every `log_every` steps and at the end."""
        if self.count and (step % self.log_every == 0 or step == self.steps):
            self._flush(step)

    def _flush(self, step: int) -> None:
        names = sorted(self.sums)
        means = self.group.mean(torch.stack([self.sums[n] for n in names]) / self.count).tolist() if names else []
        elapsed = time.perf_counter() - self.window_start
        rate = self.count / max(elapsed, 1e-9)
        row = {name: float(value) for name, value in zip(names, means)}
        self.last = row
        if self.first is None:
            self.first = row
        images_rate = rate * self.images_per_step * self.group.world_size
        data_wait = min(self.data_seconds / max(elapsed, 1e-9), 1.0)
        self.speed = {"steps_per_s": rate, "images_per_s": images_rate, "data_wait": data_wait}
        self.sums, self.count, self.data_seconds, self.window_start = {}, 0, 0.0, time.perf_counter()
        if not self.group.main:
            return
        record = {"step": step, "time": round(time.perf_counter() - self.started, 3),
                  "steps_per_s": round(rate, 4), "images_per_s": round(images_rate, 2), **row}
        with open(self.run.stats, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in row.items():
                self.writer.add_scalar(f"loss/{name}", value, step)
            self.writer.add_scalar("speed/steps_per_s", rate, step)
            self.writer.add_scalar("speed/images_per_s", images_rate, step)
            self.writer.add_scalar("speed/data_wait", data_wait, step)
        text = " ".join(f"{name}={value:.4f}" for name, value in row.items())
        speed = f"{images_rate:.1f} img/s, data wait {100 * data_wait:.0f}%"
        self.bar.set_postfix_str(f"{text} | {speed}", refresh=False)
        if self.bar.disable:  # no bar: one line per window, with the ETA the bar would show
            eta = (self.steps - step) / max(rate, 1e-9)
            print(f"{self.stage} step {step}/{self.steps} {text} {rate:.2f} step/s {speed} eta {_clock(eta)}",
                  flush=True)

    def scalar(self, name: str, value: float, step: int) -> None:
        """A value that is not a loss (ADA's p, the mean path length), rank 0's reading."""
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def images(self, name: str, images: torch.Tensor, step: int, nrow: int) -> None:
        """A grid of images in [-1, 1]: TensorBoard and samples/<name>-<step>.png."""
        if not self.group.main:
            return
        from torchvision.utils import make_grid, save_image  # here: a run without grids needs no torchvision

        grid = make_grid(images.detach().float().clamp(-1, 1).cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))
        self.run.samples.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.run.samples / f"{name}-{step:07d}.png")
        if self.writer is not None:
            self.writer.add_image(name, grid, step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
