"""The task runner a flow fans its tasks out on: threads in this process (default) or a Dask cluster.

A new local Dask cluster listens on loopback only (scheduler, workers and nannies on 127.0.0.1) and starts no
dashboard unless asked (`dask_dashboard`): a Dask scheduler runs whatever code it is sent, so it must not be
reachable from other machines unless the user says so (`dask_host`).
"""

from __future__ import annotations

from typing import Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, Field

LOOPBACK = "127.0.0.1"


class RunnerConfig(BaseModel):
    """How to run a flow's per-item tasks."""

    kind: Literal["local", "dask"] = Field("local", description="'local': a thread pool here; 'dask': a Dask cluster.", json_schema_extra={"option": "task-runner"})
    workers: int = Field(1, ge=1, description="Threads (local) or worker processes of a new local Dask cluster.")
    dask_address: str | None = Field(None, description="Address of an existing Dask scheduler (dask only).")
    dask_host: str = Field(LOOPBACK, description="Interface a new local Dask cluster's scheduler and workers listen on. Default loopback: only this machine can reach them (a Dask scheduler runs any code it is sent).")
    dask_dashboard: str | None = Field(None, description="Address of a new local Dask cluster's dashboard, e.g. 127.0.0.1:8787 (needs the bokeh package); default: no dashboard.")

    def build(self) -> TaskRunner:
        if self.kind == "local":
            return ThreadPoolTaskRunner(max_workers=self.workers)
        from prefect_dask import DaskTaskRunner

        if self.dask_address:
            return DaskTaskRunner(address=self.dask_address)
        # One thread per worker process: the heavy work (dlib, torch) is single-threaded per call already. The
        # scheduler always serves HTTP (health, metrics; the dashboard when asked): on the cluster's host, a free
        # port, unless the user names the dashboard's address (Dask's own default, ":8787", is every interface).
        http = {"dashboard_address": self.dask_dashboard} if self.dask_dashboard else \
            {"scheduler_kwargs": {"dashboard": False, "dashboard_address": f"{self.dask_host}:0"}}
        return DaskTaskRunner(cluster_kwargs={"n_workers": self.workers, "threads_per_worker": 1, "processes": True,
                                              "host": self.dask_host, "worker_dashboard_address": None, **http})
