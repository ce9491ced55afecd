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


def publish(summary: FlowSummary, key: str, rows: list[dict] | None = None, columns: tuple[str, ...] = ()) -> None:
    """Show a flow's result in the Prefect UI: its summary as a markdown artifact (`key`), and one table row per
    item (`key`-items: the `columns` of `rows`, e.g. clip, status, frames, error). Keys must be lowercase letters,
    digits and dashes; each run adds a new version under the same key."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(markdown=f"### {key}\n\n{summary.markdown()}", key=key, description=summary.lines()[0])
    if rows:
        table = [{column: _cell(row.get(column)) for column in columns} for row in rows]
        create_table_artifact(table=table, key=f"{key}-items", description=f"{len(rows)} items of {key}")


def _cell(value):
    """Table cells are plain JSON: NaN (pandas' missing value) becomes empty."""
    if isinstance(value, float) and value != value:
        return None
    return value
