"""Stages over a stream of items that run at once, each in its own thread, joined by bounded queues.

    stages = [Stage("decode", decode), Stage("analyse", analyse), Stage("render", render)]
    with Pipeline(source, stages, queue_size=8) as items:      # each stage: an iterator in, an iterator out
        for item in items:                                    # the caller's thread takes the last stage's output
            write(item)
    pipeline.seconds    # per stage: seconds spent in its own code (not waiting for its neighbours)

The slowest stage sets the pace: while it works, the others fill or drain their queues, and memory holds at most
`queue_size` items between two stages (plus what a stage keeps itself, e.g. a look-ahead window). The heavy work of
every stage here (decoding, dlib, torch, PIL, OpenCV, the ffmpeg pipe) releases the GIL, so threads overlap on cores.

A failure anywhere stops everything: the failing stage records its error and sets a stop flag, every queue operation
wakes up at least every `POLL_S` to see it, all threads are joined, and the first error is raised in the caller's
thread, with its own traceback. The caller's own failure inside the `with` block stops the stages the same way.
`threaded=False` runs the same stages one after another in the caller's thread (no overlap), e.g. to measure what
the overlap gains.
"""

from __future__ import annotations

import pickle
import queue
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterable, Iterator

POLL_S = 0.1
_DONE = object()  # the end of a stage's output


@dataclass
class Stage:
    name: str
    run: Callable[[Iterator[Any]], Iterable[Any]]  # all items in, items out, in order (a generator function)


class _Stopped(Exception):
    """Raised inside a stage whose pipeline was stopped by a failure elsewhere; ends the stage quietly."""


class _Clock:
    """Seconds a stage spends waiting for its input and its output, to subtract from its wall time."""

    def __init__(self):
        self.waiting = 0.0
        self.own = 0.0  # one-thread chain: time in the stage's own code
        self.yielded = 0

    def timed(self, items: Iterator[Any]) -> Iterator[Any]:
        while True:
            started = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                self.waiting += time.perf_counter() - started
                return
            self.waiting += time.perf_counter() - started
            yield item


class Pipeline:
    """Run `stages` over `source` (consumed by the first stage); iterate the `with` value for the last stage's items."""

    def __init__(self, source: Iterable[Any], stages: list[Stage], queue_size: int = 8, threaded: bool = True):
        self.source = source
        self.stages = stages
        self.queue_size = queue_size
        self.threaded = threaded
        self.seconds: dict[str, float] = {}  # per stage: time in its own code
        self.items: dict[str, int] = {}  # per stage: items it yielded
        self.consumer_seconds = 0.0  # the caller's time between items (e.g. the video writer)
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    # --- running ---------------------------------------------------------------------------------------------------

    def __enter__(self) -> Iterator[Any]:
        if not self.threaded:
            return self._consume(self._chain())
        upstream: queue.Queue | None = None
        for stage in self.stages:
            downstream: queue.Queue = queue.Queue(self.queue_size)
            thread = threading.Thread(target=self._work, args=(stage, upstream, downstream),
                                      name=f"stage-{stage.name}", daemon=True)
            self._threads.append(thread)
            upstream = downstream
        for thread in self._threads:
            thread.start()
        return self._consume(self._drain(upstream))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()  # a no-op after a clean end; after a failure here or there it stops every stage
        for thread in self._threads:
            thread.join()
        if self._errors and (exc_type is None or issubclass(exc_type, _Stopped)):
            raise self._errors[0]  # the stage's own error, not the caller's wake-up call

    def _work(self, stage: Stage, upstream: queue.Queue | None, downstream: queue.Queue) -> None:
        clock = _Clock()
        started = time.perf_counter()
        try:
            # the first stage pulls the source itself: producing it is that stage's work, not waiting
            items = iter(self.source) if upstream is None else clock.timed(self._drain(upstream))
            for item in stage.run(items):
                waited = time.perf_counter()
                self._put(downstream, item)
                clock.waiting += time.perf_counter() - waited
                self.items[stage.name] = self.items.get(stage.name, 0) + 1
            self._put(downstream, _DONE)
        except _Stopped:
            pass
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
            self._errors.append(error)
            self._stop.set()
        finally:
            self.seconds[stage.name] = time.perf_counter() - started - clock.waiting

    def _chain(self) -> Iterator[Any]:
        """The stages as nested generators in the caller's thread, each timed without the stages before it."""
        items: Iterator[Any] = iter(self.source)
        clocks = []
        for position, stage in enumerate(self.stages):
            clock = _Clock()
            clocks.append((stage.name, clock))
            items = _Timed(stage.run(items if position == 0 else clock.timed(items)), clock)
        try:
            yield from items
        finally:
            for name, clock in clocks:
                self.seconds[name] = clock.own
                self.items[name] = clock.yielded

    def _consume(self, items: Iterator[Any]) -> Iterator[Any]:
        """The last stage's items for the caller, timing the caller's work between them."""
        for item in items:
            handed = time.perf_counter()
            yield item  # the caller works on it until it asks for the next one
            self.consumer_seconds += time.perf_counter() - handed

    # --- queues that give way to a stop ------------------------------------------------------------------------------

    def _put(self, target: queue.Queue, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                target.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _drain(self, source: queue.Queue) -> Iterator[Any]:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                item = source.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            yield item


class _Timed:
    """A stage's output iterator in the one-thread chain: its own time is its time minus its input's."""

    def __init__(self, items: Iterable[Any], clock: _Clock):
        self._items = iter(items)
        self._clock = clock

    def __iter__(self):
        return self

    def __next__(self):
        waiting = self._clock.waiting
        started = time.perf_counter()
        try:
            item = next(self._items)
        finally:
            self._clock.own += (time.perf_counter() - started) - (self._clock.waiting - waiting)
        self._clock.yielded += 1
        return item


class HeldItems:
    """A first-in first-out hold for a stage's look-ahead: up to `in_memory` items in memory, the rest pickled to a
    temporary file (read back in order), so a long wait (a video that opens without a face) costs disk, not RAM."""

    def __init__(self, in_memory: int = 64):
        self.in_memory = in_memory
        self._memory: deque[Any] = deque()
        self._file = None
        self._on_disk = 0
        self._read_at = 0
        self._write_at = 0
        self.pushed = 0  # items held so far, in all

    def __len__(self) -> int:
        return len(self._memory) + self._on_disk

    def push(self, item: Any) -> None:
        self.pushed += 1
        if self._on_disk == 0 and len(self._memory) < self.in_memory:
            self._memory.append(item)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="held-frames-")
        self._file.seek(self._write_at)
        pickle.dump(item, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self._write_at = self._file.tell()
        self._on_disk += 1

    def pop(self) -> Any:
        if not self._memory and self._on_disk:
            self._file.seek(self._read_at)
            item = pickle.load(self._file)
            self._read_at = self._file.tell()
            self._on_disk -= 1
            if self._on_disk == 0:  # drained: start the file again from the beginning
                self._file.seek(0)
                self._file.truncate()
                self._read_at = self._write_at = 0
            return item
        return self._memory.popleft()

    def through(self, items: Iterable[Any], value: Callable[[Any], Any]) -> Iterator[Any]:
        """`value(item)` of each item, the item held as it passes (a look-ahead filter reads the values; the
        caller pops the items as the filter gives out its results)."""
        for item in items:
            self.push(item)
            yield value(item)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
