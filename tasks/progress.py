"""Progress bars for long loops over items (silent when stderr is not a terminal: CI, Prefect workers), and the
results of fanned-out tasks collected as they finish."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from prefect.futures import PrefectFuture, as_completed
from tqdm.auto import tqdm


@contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[str], None]]:
    """Yields `advance(status)`: one item done, with a running count per status shown beside the bar."""
    counts: Counter[str] = Counter()
    with tqdm(total=total, desc=description, unit="item", disable=None, dynamic_ncols=True) as bar:

        def advance(status: str) -> None:
            counts[status] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)

        yield advance


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
