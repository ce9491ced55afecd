"""Signals over the frames of a clip: zero-lag smoothing and filling the frames where a face was not read.

Both preprocessing (crop boxes) and reenactment (the driving face's parameters) see a whole clip before they use
it, so a centred filter fits: it removes frame-to-frame estimation noise without the lag that a causal filter
(one-euro, exponential) leaves behind real motion.
"""

from __future__ import annotations

from collections import deque
from typing import Literal
from collections.abc import Iterable, Iterator

import numpy as np
from scipy.ndimage import gaussian_filter1d

TRUNCATE = 4.0  # scipy's default: the Gaussian is cut at 4 sigma


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """values [T, ...] smoothed along time by a centred Gaussian of `sigma` frames (0: unchanged copy).

    A step is followed within about 3 sigma on either side; the ends repeat the first and last value.
    """
    values = np.asarray(values, np.float64)
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    return gaussian_filter1d(values, sigma, axis=0, mode="nearest", truncate=TRUNCATE)


def nearest_true(mask: np.ndarray) -> np.ndarray:
    """For each position, the index of the nearest True in `mask` (earlier wins a tie); O(T) memory."""
    good = np.flatnonzero(mask)
    if len(good) == 0:
        raise ValueError("no True in the mask: nothing to take values from")
    right = np.clip(np.searchsorted(good, np.arange(len(mask))), 0, len(good) - 1)
    left = np.clip(right - 1, 0, len(good) - 1)
    positions = np.arange(len(mask))
    take_left = np.abs(positions - good[left]) <= np.abs(good[right] - positions)
    return np.where(take_left, good[left], good[right])


def last_true(mask: np.ndarray) -> np.ndarray:
    """For each position, the index of the latest True at or before it; positions before the first True take the
    first True (there is nothing earlier to hold)."""
    mask = np.asarray(mask, bool)
    good = np.flatnonzero(mask)
    if len(good) == 0:
        raise ValueError("no True in the mask: nothing to take values from")
    held = np.maximum.accumulate(np.where(mask, np.arange(len(mask)), -1))
    return np.where(held < 0, good[0], held)


def false_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, stop) frame ranges where `mask` is False, in order (what a summary reports)."""
    padded = np.concatenate([[True], np.asarray(mask, bool), [True]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2])]


# --- the same filters over a stream ------------------------------------------------------------------------------------
# Reenactment reads a driving video once, front to back, so it cannot hold the whole clip: these give the results of
# `gaussian_smooth` and of filling by `nearest_true` / `last_true` while seeing values one at a time, each output as
# soon as the values it depends on have arrived (a few frames later; longer only inside a stretch without values).

FillRule = Literal["nearest", "last"]


class NothingToFill(ValueError):
    """A sequence without a single value: there is nothing to fill its gaps from."""


def gaussian_radius(sigma: float) -> int:
    """How many frames on either side `gaussian_smooth` reads: scipy's Gaussian reaches 4 sigma."""
    return int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0


def gaussian_smooth_stream(values: Iterable[np.ndarray], sigma: float) -> Iterator[np.ndarray]:
    """`gaussian_smooth` of a sequence seen one value at a time: yields value i once value i + radius has arrived
    (or the sequence ended), holding only 2 radius + 1 values. Equal to `gaussian_smooth` of the whole sequence."""
    radius = gaussian_radius(sigma)
    if radius == 0:
        yield from (np.asarray(value, np.float64).copy() for value in values)
        return
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / sigma**2 * offsets.astype(np.float64) ** 2)
    weights /= weights.sum()
    window: deque[np.ndarray] = deque()  # values first - radius .. latest, clamped at the start
    index, emitted = -1, 0  # the latest index seen; the next index to yield

    def output(at: int, last: int) -> np.ndarray:
        taken = np.clip(at + offsets, 0, last)  # 'nearest' ends: the first and last values repeat
        stack = np.stack([window[position - (index - len(window) + 1)] for position in taken])
        return np.tensordot(weights, stack, axes=1)

    for value in values:
        index += 1
        window.append(np.asarray(value, np.float64))
        if len(window) > 2 * radius + 1:
            window.popleft()
        if index - radius >= 0:
            yield output(index - radius, index + radius)  # everything up to index is known: no clamp at the end
            emitted += 1
    while emitted <= index:
        yield output(emitted, index)
        emitted += 1


def fill_gaps_stream(values: Iterable[np.ndarray | None], rule: FillRule) -> Iterator[tuple[np.ndarray, bool]]:
    """(value, was_there) per position of a sequence where None marks a missing value, filled as the batch helpers
    fill: "nearest" as `nearest_true` (the nearer neighbour, the earlier on a tie), "last" as `last_true` (the
    latest earlier value; the first value before it). A missing value is yielded as soon as it is decided: at once
    after a value under "last", after waiting as long as the gap so far under "nearest". `NothingToFill` at the end
    when no value ever came."""
    pending: deque[int] = deque()  # positions waiting for a value, in order
    previous: tuple[int, np.ndarray] | None = None
    index = -1
    for index, value in enumerate(values):
        if value is None:
            if previous is not None and rule == "last":
                yield previous[1], False
                continue
            pending.append(index)
            # under "nearest", a position twice as far from the previous value as from here can no longer be
            # claimed by a later value: it takes the previous one (ties go to the earlier value)
            while previous is not None and pending and index - pending[0] >= pending[0] - previous[0]:
                pending.popleft()
                yield previous[1], False
            continue
        while pending:
            position = pending.popleft()
            nearer_before = previous is not None and position - previous[0] <= index - position
            yield (previous[1] if nearer_before else value), False
        previous = (index, value)
        yield value, True
    if pending:
        if previous is None:
            raise NothingToFill(f"no value in any of {index + 1} positions: nothing to fill from")
        for _ in pending:
            yield previous[1], False
    elif previous is None and index >= 0:
        raise NothingToFill(f"no value in any of {index + 1} positions: nothing to fill from")
