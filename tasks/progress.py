"""Progress of long loops where people look: a bar in a terminal, a line in the log every little while (a worker's
log, CI), and a progress artifact that moves in the Prefect UI while a run is on; and the results of fanned-out
tasks collected as they finish."""

from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence

from prefect.futures import PrefectFuture, as_completed
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 15.0  # a log line at most this often (and at the end)
ARTIFACT_EVERY_S = 2.0  # the UI's progress artifact moves at most this often


class _Report:
    """The log lines and the Prefect progress artifact of one loop."""

    def __init__(self, total: int, description: str, unit: str):
        self.total, self.description, self.unit = total, description, unit
        self.started = self.logged = self.shown = time.monotonic()
        self.logger = _run_logger()
        self.artifact = _progress_artifact(description) if self.logger is not log else None

    def update(self, done: int, counts: Counter, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self.logged >= LOG_EVERY_S:
            self.logged = now
            rate = done / max(now - self.started, 1e-9)
            left = f", {(self.total - done) / rate:.0f} s left" if rate and done < self.total else ""
            statuses = f" ({', '.join(f'{n} {s}' for s, n in counts.items())})" if set(counts) - {"done"} else ""
            self.logger.info("%s: %d/%d %ss%s, %.1f %ss/s%s", self.description, done, self.total, self.unit,
                             statuses, rate, self.unit, left)
        if self.artifact is not None and (final or now - self.shown >= ARTIFACT_EVERY_S):
            self.shown = now
            _move_artifact(self.artifact, 100.0 * done / max(self.total, 1))


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task run (its lines reach the UI), else this module's."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    return get_run_logger() if (FlowRunContext.get() or TaskRunContext.get()) else log


def _progress_artifact(description: str):
    from prefect.artifacts import create_progress_artifact

    try:
        return create_progress_artifact(progress=0.0, description=description)
    except Exception as err:  # noqa: BLE001 (progress must never stop the work it shows)
        log.debug("no progress artifact: %s", err)
        return None


def _move_artifact(artifact, percent: float) -> None:
    from prefect.artifacts import update_progress_artifact

    try:
        update_progress_artifact(artifact_id=artifact, progress=percent)
    except Exception as err:  # noqa: BLE001
        log.debug("progress artifact not updated: %s", err)


@contextmanager
def progress(total: int, description: str, unit: str = "item") -> Iterator[Callable[..., None]]:
    """Yields `advance(status="done", count=1)`: items done, with a running count per status beside the bar."""
    counts: Counter[str] = Counter()
    report = _Report(total, description, unit)
    with tqdm(total=total, desc=description, unit=unit, disable=None, dynamic_ncols=True) as bar:

        def advance(status: str = "done", count: int = 1) -> None:
            counts[status] += count
            bar.set_postfix(counts, refresh=False)
            bar.update(count)
            report.update(sum(counts.values()), counts)  # a bar off the terminal counts nothing

        yield advance
        report.update(sum(counts.values()), counts, final=True)


def collect_rows(futures: Sequence[PrefectFuture], description: str,
                 save: Callable[[list[dict]], None] | None = None, every_s: float = 10.0) -> list[dict]:
    """The result rows (each a dict with a `status`) of `futures` as they finish, counted on a progress bar.

    `save` is handed the rows that arrived since its last call, at most every `every_s` seconds and not at the end
    (the caller saves the whole list then), so a killed run keeps what had finished.
    """
    rows: list[dict] = []
    pending: list[dict] = []
    last_save = time.monotonic()
    with progress(total=len(futures), description=description) as advance:
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            pending.append(row)
            advance(row["status"])
            if save is not None and time.monotonic() - last_save > every_s:
                save(pending)
                pending, last_save = [], time.monotonic()
    return rows
