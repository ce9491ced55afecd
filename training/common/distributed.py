"""Multi-GPU and multi-node training with torchrun: one process per device, DistributedDataParallel.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them (env://) and
joins the group with NCCL on GPUs or gloo on CPUs. Without them (a plain `python` run, or a Prefect flow) it is
a group of one and every helper here is a no-op, so a stage's code has one path for both. Every rank computes the
same steps; only rank 0 writes files. Multi-node runs need `out` on a file system all nodes share.

    torchrun --nproc_per_node 8 -m training.generator --config gen.yaml store=/data/vox.zarr
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_endpoint host0:29500 -m training.encoder ...
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the group."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and the summary."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the ranks (the value itself in a group of one)."""
        if not self.active:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


def init_distributed(device_for) -> Distributed:
    """Join the torchrun group described by the environment (or stand alone); `device_for(local_rank)` picks the
    device, e.g. `TrainingConfig.device_for`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_for(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return Distributed(rank, local_rank, world_size, device)


def close_distributed(group: Distributed) -> None:
    if group.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, group: Distributed, broadcast_buffers: bool = True,
         find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around `module` in a group, else `module`. Call the wrapper only for passes whose
    gradients train the module (a pass through a frozen network calls the module itself: DDP expects every
    forward through it to be followed by a backward that reaches its parameters). A module whose forward skips
    some parameters for a while (e4e's progressive stages) needs `find_unused_parameters`."""
    if not group.active:
        return module
    device_ids = [group.device.index] if group.device.type == "cuda" else None
    # a [1, C] weight's gradient comes out of matmul with strides (1, 1): the same memory order as the bucket's
    # (C, 1), which DDP still reports once per process
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, gradient_as_bucket_view=True,
                                               find_unused_parameters=find_unused_parameters,
                                               **_buffer_sync(broadcast_buffers))


def _buffer_sync(per_forward: bool) -> dict[str, bool]:
    """DDP's per-forward buffer broadcast under its current name (torch >= 2.14 renamed broadcast_buffers)."""
    parameters = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers": per_forward}


def launch(module: str, config_path: Path, processes: int, extra_args: tuple[str, ...] = ()) -> None:
    """Run `python -m module --config config_path` in `processes` processes on this machine with torchrun, and wait.
    The ranks run no Prefect; rank 0 writes the run's summary.json, which the caller reads."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", module, "--config", str(config_path), *extra_args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"torchrun {module} with {processes} processes failed with exit code {result.returncode}")
