"""Signals over the frames of a clip: zero-lag smoothing and filling the frames where a face was not read.

Both preprocessing (crop boxes) and reenactment (the driving face's parameters) see a whole clip before they use
it, so a centred filter fits: it removes frame-to-frame estimation noise without the lag that a causal filter
(one-euro, exponential) leaves behind real motion.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """values [T, ...] smoothed along time by a centred Gaussian of `sigma` frames (0: unchanged copy).

    A step is followed within about 3 sigma on either side; the ends repeat the first and last value.
    """
    values = np.asarray(values, np.float64)
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    return gaussian_filter1d(values, sigma, axis=0, mode="nearest")


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
