"""The stage pipeline: order, bounded memory, overlap, and a clean stop when any stage (or the caller) fails."""

import threading

import numpy as np
import pytest

from tasks.stream import HeldItems, Pipeline, Stage


def _stage_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("stage-")]


def _double(items):
    for item in items:
        yield 2 * item


def _pairs(items):  # a stage that groups (a batch): two in, two out, the last one alone
    group = []
    for item in items:
        group.append(item)
        if len(group) == 2:
            yield from group
            group = []
    yield from group


@pytest.mark.parametrize("threaded", [True, False])
def test_items_come_out_in_order_through_every_stage(threaded):
    pipeline = Pipeline(range(101), [Stage("double", _double), Stage("pairs", _pairs), Stage("add", lambda xs: (x + 1 for x in xs))],
                        queue_size=3, threaded=threaded)
    with pipeline as items:
        assert list(items) == [2 * x + 1 for x in range(101)]
    assert pipeline.items == {"double": 101, "pairs": 101, "add": 101}
    assert set(pipeline.seconds) == {"double", "pairs", "add"} and not _stage_threads()


def test_memory_is_bounded_by_the_queues_not_the_stream():
    produced = []

    def source():
        for index in range(2000):
            produced.append(index)
            yield index

    in_flight = []
    with Pipeline(source(), [Stage("a", _double), Stage("b", _double)], queue_size=4) as items:
        for consumed, _ in enumerate(items, 1):
            in_flight.append(len(produced) - consumed)
    # at most: a queue of 4 behind each of the two stages, one item inside each stage, one in the caller's hands
    assert max(in_flight) <= 2 * 4 + 3


def test_stages_work_at_the_same_time():
    # stage b must see item 0 while stage a still works on later items: a handshake that a one-thread chain could
    # never complete (it would wait here forever, hence the timeout)
    b_started = threading.Event()
    seen_by_a_after = []

    def a(items):
        for item in items:
            yield item
            if item == 0:
                seen_by_a_after.append(b_started.wait(timeout=10))

    def b(items):
        for item in items:
            b_started.set()
            yield item

    with Pipeline(range(5), [Stage("a", a), Stage("b", b)], queue_size=2) as items:
        assert list(items) == list(range(5))
    assert seen_by_a_after == [True]


@pytest.mark.parametrize("failing", ["first", "middle", "last"])
def test_a_failing_stage_stops_every_stage_and_raises_its_own_error(failing):
    produced = []

    def source():
        for index in range(10_000):
            produced.append(index)
            yield index

    def fails(items):
        for item in items:
            if item == 20:
                raise RuntimeError("stage failed (injected)")
            yield item

    stages = [Stage(name, fails if name == failing else _pairs) for name in ("first", "middle", "last")]
    received = []
    with pytest.raises(RuntimeError, match="injected"):
        with Pipeline(source(), stages, queue_size=4) as items:
            for item in items:
                received.append(item)
    assert received == list(range(len(received))) and len(received) <= 20
    assert len(produced) < 100  # the source stopped too: nothing ran on to the end of the stream
    assert not _stage_threads()  # every thread joined


def test_the_callers_failure_stops_the_stages():
    with pytest.raises(ValueError, match="writer failed"):
        with Pipeline(iter(range(10_000)), [Stage("a", _double)], queue_size=2) as items:
            for item in items:
                if item == 10:
                    raise ValueError("writer failed")
    assert not _stage_threads()


def test_held_items_spill_to_disk_and_come_back_in_order():
    held = HeldItems(in_memory=3)
    arrays = [np.full((4, 4), index) for index in range(10)]
    for array in arrays[:7]:
        held.push(array)
    assert len(held) == 7 and held._on_disk == 4
    out = [held.pop() for _ in range(5)]
    for array in arrays[7:]:
        held.push(array)
    out += [held.pop() for _ in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(out, arrays)) and len(held) == 0
    held.close()
