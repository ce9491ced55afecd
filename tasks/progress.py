"""A progress bar for long loops over items; silent when stderr is not a terminal (CI, Prefect workers)."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator

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
