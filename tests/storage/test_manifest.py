"""The manifest with several writers and readers at once: no row lost, no reader error."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from storage.manifest import compact_manifest, is_missing, pending_dir, read_manifest, record_row, upsert_manifest

ROWS = 60


def _row(writer: str, n: int, status: str = "ok") -> dict:
    return {"identity": writer, "video": "v", "clip": f"{n:03d}", "status": status, "error": None, "frames": n}


def _upserter(path: str, writer: str) -> None:
    for n in range(ROWS):
        upsert_manifest(path, [_row(writer, n)])


def _recorder(path: str, writer: str) -> None:
    for n in range(ROWS):
        record_row(path, _row(writer, n))
        if n % 7 == 0:
            compact_manifest(path)


def _reader(path: str, stop, errors) -> None:
    while not stop.is_set():
        try:
            read_manifest(path)
        except Exception as err:  # noqa: BLE001  (any error is what this test looks for)
            errors.put(f"{type(err).__name__}: {err}")


@pytest.mark.parametrize("write", [_upserter, _recorder])
def test_two_writers_and_a_reader_lose_nothing(tmp_path, write):
    path = str(tmp_path / "manifest.parquet")
    ctx = mp.get_context("spawn")
    stop, errors = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(path, stop, errors))
    reader.start()
    writers = [ctx.Process(target=write, args=(path, name)) for name in ("a", "b")]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    stop.set()
    reader.join(60)
    manifest = read_manifest(path)
    assert len(manifest) == 2 * ROWS and not manifest.duplicated(["identity", "video", "clip"]).any()
    assert errors.empty(), errors.get()
    assert list(pending_dir(path).glob("*.json")) == []  # every row merged


def test_recorded_rows_reach_the_manifest_on_read_and_the_latest_row_wins(tmp_path):
    path = tmp_path / "manifest.parquet"
    record_row(path, _row("a", 1, "failed") | {"error": "no face"})
    record_row(path, _row("b", 1))
    assert not path.exists()  # nothing merged yet: a killed run leaves these files
    manifest = read_manifest(path)
    assert path.exists() and len(manifest) == 2
    record_row(path, _row("a", 1))
    manifest = read_manifest(path).set_index("identity")
    assert len(manifest) == 2 and manifest.loc["a", "status"] == "ok"
    assert is_missing(manifest.loc["a", "error"])
    with pytest.raises(ValueError, match="unknown manifest status"):
        record_row(path, _row("c", 1, "done"))
