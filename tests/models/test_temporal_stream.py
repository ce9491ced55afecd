"""The stream versions of the temporal filters give exactly the whole-clip results, while holding few values."""

import numpy as np
import pytest

from models.temporal import (
    NothingToFill,
    fill_gaps_stream,
    gaussian_radius,
    gaussian_smooth,
    gaussian_smooth_stream,
    last_true,
    nearest_true,
)


class _Counted:
    """An iterable that records how many values were taken from it, to check how far a stream looks ahead."""

    def __init__(self, values):
        self.values = list(values)
        self.taken = 0

    def __iter__(self):
        for value in self.values:
            self.taken += 1
            yield value


@pytest.mark.parametrize("length", [1, 2, 5, 9, 40])
@pytest.mark.parametrize("sigma", [0.0, 0.6, 1.0, 2.0, 3.3])
def test_stream_smoothing_equals_smoothing_the_whole_clip(length, sigma):
    values = np.random.default_rng(length).normal(0, 3, (length, 3))
    streamed = np.stack(list(gaussian_smooth_stream(iter(values), sigma)))
    np.testing.assert_allclose(streamed, gaussian_smooth(values, sigma), rtol=0, atol=1e-12)


def test_stream_smoothing_looks_ahead_by_its_radius_only():
    values = _Counted(np.arange(100.0)[:, None])
    stream = gaussian_smooth_stream(values, 2.0)
    for index in range(50):
        next(stream)
        assert values.taken == index + gaussian_radius(2.0) + 1  # value i needs values up to i + radius
    assert gaussian_radius(2.0) == 8 and gaussian_radius(1.0) == 4


@pytest.mark.parametrize("rule, batch", [("nearest", nearest_true), ("last", last_true)])
def test_stream_filling_equals_filling_the_whole_clip(rule, batch):
    rng = np.random.default_rng(3)
    for _ in range(200):
        mask = rng.random(rng.integers(1, 30)) < rng.uniform(0.1, 0.9)
        if not mask.any():
            continue
        values = rng.normal(size=(len(mask), 2))
        streamed = list(fill_gaps_stream((value if seen else None for value, seen in zip(values, mask)), rule))
        assert [seen for _, seen in streamed] == mask.tolist()
        np.testing.assert_array_equal(np.stack([value for value, _ in streamed]), values[batch(mask)])


def test_stream_filling_decides_a_gap_as_soon_as_it_can():
    # a long gap after a value: under "last" each missing value comes out at once; under "nearest" position j
    # comes out once the gap has run as far again beyond it (nothing later can be nearer)
    values = [np.zeros(1)] + [None] * 20 + [np.ones(1)]
    for rule, expected_taken in (("last", [1, 2, 3, 4]), ("nearest", [1, 3, 5, 7])):
        source = _Counted(values)
        stream = fill_gaps_stream(source, rule)
        taken = []
        for _ in range(4):
            next(stream)
            taken.append(source.taken)
        assert taken == expected_taken, rule


def test_stream_filling_of_nothing_says_so():
    with pytest.raises(NothingToFill, match="no value in any of 3 positions"):
        list(fill_gaps_stream([None, None, None], "nearest"))
    assert list(fill_gaps_stream([], "last")) == []
