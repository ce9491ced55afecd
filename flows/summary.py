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

    @staticmethod
    def tally(rows: list[dict]) -> dict[str, int]:
        """ok / skipped / failed counts of result rows, and the frames of those that did not fail."""
        counts = {status: sum(row["status"] == status for row in rows) for status in ("ok", "skipped", "failed")}
        return {**counts, "frames": int(sum(row.get("frames") or 0 for row in rows if row["status"] != "failed"))}

    def counts_line(self, noun: str, frames: int, seconds: float) -> str:
        return (f"{self.items} {noun}: {self.ok} ok, {self.skipped} skipped, {self.failed} failed; "
                f"{frames} frames in {seconds:.1f} s")


def shown(path: str | Path) -> str:
    """A path as people should see it: absolute, so it can be pasted anywhere."""
    return str(Path(path).resolve())


def publish(summary, key: str, rows: list[dict] | None = None, columns: tuple[str, ...] = (),
            link: str | None = None) -> None:
    """Show a flow's result where its users look: each line of `summary.lines()` in the run's log, and in the
    Prefect UI a markdown artifact `key` of those lines, a table artifact `key`-items of `rows` (their `columns`,
    e.g. clip, status, frames, error) and a link artifact `key`-link to `link` (a file the run wrote). Keys are
    lowercase letters, digits and dashes; each run adds a version under the same key."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
    from prefect.logging import get_run_logger

    lines = summary.lines()
    logger = get_run_logger()
    for line in lines:
        logger.info("%s", line)
    create_markdown_artifact(markdown="\n".join(f"- {line}" for line in lines), key=key, description=lines[0])
    if rows:
        table = [{column: _cell(row.get(column)) for column in columns} for row in rows]
        create_table_artifact(table=table, key=f"{key}-items", description=f"{len(rows)} rows of {key}")
    if link:
        create_link_artifact(link=Path(link).resolve().as_uri(), link_text=Path(link).name, key=f"{key}-link",
                             description=f"what {key} wrote")


def _cell(value):
    """Table cells are plain JSON: NaN (pandas' missing value) becomes empty, other values their text."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value if isinstance(value, (int, float, str, bool)) else str(value)
