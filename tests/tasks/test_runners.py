"""The task runners: a new local Dask cluster listens on loopback only and starts no dashboard unless asked."""

from __future__ import annotations

import ipaddress

import psutil

from tasks.runners import RunnerConfig
from tests.references import reference


def _listening(process: psutil.Process) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every socket `process` and its children listen on."""
    found = []
    for member in [process, *process.children(recursive=True)]:
        try:
            connections = member.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        found += [(member.pid, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


def test_a_local_dask_cluster_listens_on_loopback_only_and_has_no_dashboard():
    reference("prefect_dask")
    me = psutil.Process()
    before = set(_listening(me))
    runner = RunnerConfig(kind="dask", workers=1).build()
    with runner:
        cluster = runner.client.cluster
        info = runner.client.scheduler_info()
        opened = set(_listening(me)) - before
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert info["workers"] and all(address.startswith("tcp://127.0.0.1:") for address in info["workers"])
        assert info["services"]["dashboard"] != 8787  # its HTTP endpoint: a free loopback port, not Dask's default
        assert opened, "the cluster opened no listening socket that psutil can see"
        exposed = [entry for entry in opened if not ipaddress.ip_address(entry[1]).is_loopback]
        assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_listening_addresses_are_options():
    cluster = RunnerConfig(kind="dask", dask_host="0.0.0.0", dask_dashboard="127.0.0.1:8787").build().cluster_kwargs
    assert cluster["host"] == "0.0.0.0" and cluster["dashboard_address"] == "127.0.0.1:8787"
    default = RunnerConfig(kind="dask").build().cluster_kwargs
    assert default["host"] == "127.0.0.1" and default["worker_dashboard_address"] is None
    assert default["scheduler_kwargs"] == {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
