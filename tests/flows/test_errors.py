"""A user's mistake reads as one line: in the terminal, and in a flow run's log (a worker's, the Prefect UI's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from flows.cli import app

ROOT = Path(__file__).resolve().parents[2]
FLOWS = """
import sys
import flows
from prefect import flow

@flow
def failing(error: str):
    raise getattr(__builtins__, error)(f"the reason of the {error}")

for error in ("FileNotFoundError", "ZeroDivisionError"):
    try:
        failing(error)
    except Exception:
        print("=== end of", error, file=sys.stderr, flush=True)
"""


def test_a_user_error_in_a_flow_run_is_logged_without_a_traceback_and_a_bug_with_one():
    done = subprocess.run([sys.executable, "-c", FLOWS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    user_error, bug = (done.stdout + done.stderr).split("=== end of FileNotFoundError")
    assert "the reason of the FileNotFoundError" in user_error and "Traceback" not in user_error
    assert "the reason of the ZeroDivisionError" in bug and "Traceback" in bug


def test_a_missing_store_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["encode-dataset", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no clip store at {tmp_path / 'none.zarr'} (run preprocess-dataset first)"
