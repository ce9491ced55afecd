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


def test_any_file_name_becomes_a_key_and_keeps_its_name(tmp_path):
    root = tmp_path / "vox"
    _touch(root / "Jöhn Smith" / "holiday video" / "clip 1.mp4")
    _touch(root / "a b" / "v" / "00001.mp4")
    _touch(root / "a_b" / "v" / "00001.mp4")  # would share a key with "a b" if spaces became '_'
    sources = discover(root)
    assert [str(s.key) for s in sources] == ["J%C3%B6hn%20Smith/holiday%20video/clip%201", "a%20b/v/00001", "a_b/v/00001"]
    assert sources[0].name == "Jöhn Smith/holiday video/clip 1" and all(s.error is None for s in sources)
    assert [str(s.key) for s in discover(root)] == [str(s.key) for s in sources]  # stable


def test_a_key_claimed_by_several_files_is_one_error_naming_them(tmp_path):
    root = tmp_path / "vox"
    for name in ("00001.mp4", "00001.mkv", "00002.mp4"):
        _touch(root / "id1" / "v" / name)
    twice, single = discover(root)
    assert str(twice.key) == "id1/v/00001" and "claimed by 2 different files" in twice.error
    assert "00001.mkv" in twice.error and "00001.mp4" in twice.error and single.error is None
    listing = root / "list.csv"
    listing.write_text("path,identity,video,clip\nid1/v/00002.mp4,x,y,00001\nid1/v/00002.mp4,x,y,00001\n")
    (same,) = discover(listing)  # the same file listed twice counts once
    assert same.error is None and str(same.key) == "x/y/00001"  # a clip column of digits stays text
