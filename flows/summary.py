"""What a flow returns: a typed summary that the command line prints and the Prefect UI shows as an artifact."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel


class FlowSummary(BaseModel):
    """A flow's result. `lines()` is what a person reads (the terminal, the run's markdown artifact); `exit_code`
    is what a script reads: 0 unless the run did nothing useful."""

    def lines(self) -> list[str]:
        raise NotImplementedError

    @property
    def exit_code(self) -> int:
        return 0

    def markdown(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines())


class ItemCounts(FlowSummary):
    """A flow over many items (clips, pairs), each ok, skipped or failed."""

    ok: int
    skipped: int
    failed: int

    @property
    def items(self) -> int:
        return self.ok + self.skipped + self.failed

    @property
    def exit_code(self) -> int:
        return 1 if self.items and self.failed == self.items else 0

    def counts_line(self, noun: str, frames: int, seconds: float) -> str:
        return (f"{self.items} {noun}: {self.ok} ok, {self.skipped} skipped, {self.failed} failed; "
                f"{frames} frames in {seconds:.1f} s")


def shown(path: str | Path) -> str:
    """A path as people should see it: absolute, so it can be pasted anywhere."""
    return str(Path(path).resolve())
