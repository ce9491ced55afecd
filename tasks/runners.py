"""The task runner a flow fans its tasks out on: threads in this process (default) or a Dask cluster."""

from __future__ import annotations

from typing import Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, Field


class RunnerConfig(BaseModel):
    """How to run a flow's per-item tasks."""

    kind: Literal["local", "dask"] = Field("local", description="'local': a thread pool here; 'dask': a Dask cluster.")
    workers: int = Field(1, ge=1, description="Threads (local) or worker processes of a new local Dask cluster.")
    dask_address: str | None = Field(None, description="Address of an existing Dask scheduler (dask only).")

    def build(self) -> TaskRunner:
        if self.kind == "local":
            return ThreadPoolTaskRunner(max_workers=self.workers)
        from prefect_dask import DaskTaskRunner

        if self.dask_address:
            return DaskTaskRunner(address=self.dask_address)
        # One thread per worker process: the heavy work (dlib, torch) is single-threaded per call already.
        return DaskTaskRunner(cluster_kwargs={"n_workers": self.workers, "threads_per_worker": 1, "processes": True})
