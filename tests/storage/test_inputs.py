import pandas as pd

from storage.inputs import discover


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_voxceleb_directory_layout(tmp_path):
    root = tmp_path / "vox"
    _touch(root / "id10001" / "1zcIwhmdeo4" / "00001.mp4")
    _touch(root / "id10001" / "1zcIwhmdeo4" / "00002.mp4")
    _touch(root / "id10002" / "abc" / "00001.mp4")
    _touch(root / "id10002" / "abc" / "notes.txt")
    _touch(root / "stray.mp4")
    sources = discover(root)
    assert [str(s.key) for s in sources] == ["id10001/1zcIwhmdeo4/00001", "id10001/1zcIwhmdeo4/00002", "id10002/abc/00001"]
    assert all(s.error is None for s in sources)


def test_symlink_leading_outside_the_root_is_an_error(tmp_path):
    root = tmp_path / "vox"
    outside = _touch(tmp_path / "secret" / "x.mp4")
    link = root / "id1" / "v1" / "00001.mp4"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    (source,) = discover(root)
    assert "outside the input root" in source.error


def test_list_file_with_dotdot_and_explicit_keys(tmp_path):
    root = tmp_path / "data"
    _touch(root / "id1" / "v1" / "00001.mp4")
    _touch(tmp_path / "elsewhere" / "a" / "b" / "c.mp4")
    listing = tmp_path / "data" / "list.csv"
    pd.DataFrame({"path": ["id1/v1/00001.mp4", "../elsewhere/a/b/c.mp4"]}).to_csv(listing, index=False)
    ok, escaped = discover(listing)
    assert ok.error is None and str(ok.key) == "id1/v1/00001"
    assert "outside the input root" in escaped.error
    table = tmp_path / "list.parquet"
    pd.DataFrame({"path": [str(root / "id1/v1/00001.mp4")], "identity": ["idX"], "video": ["vid"], "clip": ["7"]}).to_parquet(table)
    (entry,) = discover(table, root=root)
    assert str(entry.key) == "idX/vid/7" and entry.error is None
