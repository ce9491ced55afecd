"""Long loops report their progress in the log too, not only on a terminal's bar."""

from __future__ import annotations

import logging

from tasks import progress as progress_module
from tasks.progress import progress


def test_a_loop_off_the_terminal_logs_its_counts_while_it_runs_and_at_the_end(caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)  # every item, so that the test sees the running lines
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        with progress(4, "clips") as advance:
            for status in ("ok", "ok", "failed", "ok"):
                advance(status)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("clips: 1/4 items (1 ok)")
    assert lines[-1].startswith("clips: 4/4 items (3 ok, 1 failed)") and "items/s" in lines[-1]
