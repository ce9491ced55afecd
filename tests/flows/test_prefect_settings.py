"""The `prefect` commands a user types in the checkout use the project's settings, and deploying switches nothing on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_prefect_commands_in_the_checkout_keep_state_here_and_send_no_telemetry(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env["HOME"] = str(tmp_path / "home")  # nothing may land there
    done = subprocess.run([str(BIN / "prefect"), "config", "view", "--show-sources"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    assert "PREFECT_HOME='.prefect' (from prefect.toml)" in done.stdout
    assert "PREFECT_SERVER_ANALYTICS_ENABLED='False' (from prefect.toml)" in done.stdout
    assert not (tmp_path / "home").exists()


def test_every_schedule_ships_paused():
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    schedules = [schedule for entry in deployments for schedule in entry.get("schedules") or []]
    assert schedules and all(schedule["active"] is False for schedule in schedules)
