import argparse
import os

import numpy as np
import pytest
import torch
from torch import nn

from storage import checkpoints
from storage.checkpoints import (
    CheckpointKeysError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_converted,
    load_safetensors,
    read_safetensors_metadata,
    save_safetensors,
)


class RunsACommand:
    """Unpickling this calls os.system: what a tampered checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _a_matrix_checkpoint() -> dict:
    """The layout of the official A_matrix.pt (values small)."""
    return {"A_matrix": {"linear.weight": torch.randn(32, 15), "linear.bias": torch.randn(32)},
            "learned_directions": 15, "shift_scale": 6.0, "w_plus": True, "num_layers_shift": 8, "shift_dim": 512,
            "step": np.int64(200), "args": argparse.Namespace(lr=1e-4)}


def test_official_layout_with_plain_extras_loads(tmp_path):
    path = tmp_path / "A_matrix.pt"
    saved = _a_matrix_checkpoint()
    torch.save(saved, path)
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded["A_matrix"][name], value) for name, value in saved["A_matrix"].items())
    assert loaded["w_plus"] is True and loaded["step"] == 200 and loaded["args"].lr == 1e-4


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_callable_is_refused_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"e": {"w": torch.zeros(2)}, "opts": RunsACommand(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt refused: it names posix\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_whole_pickled_module_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict"):
        load_checkpoint(path)


def test_unreadable_files_are_corrupt_not_unsafe(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"<html>quota exceeded</html>")  # what a failed Google Drive download looks like
    truncated = tmp_path / "truncated.pt"
    torch.save({"g_ema": _small_net().state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    bare_tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), bare_tensor)
    for path in (garbage, truncated, bare_tensor):
        with pytest.raises(CorruptCheckpointError, match=str(path)):
            load_checkpoint(path)


def test_safetensors_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"view": base[1:], "same_storage": base, "steps": torch.tensor(7), "half": torch.randn(5).half()}
    path = tmp_path / "w.safetensors"
    save_safetensors(state, path, {"w_plus": True, "shape": [14, 512], "name": "A"})
    tensors, metadata = load_safetensors(path)
    assert set(tensors) == set(state)
    assert all(torch.equal(tensors[name], state[name]) and tensors[name].dtype == state[name].dtype for name in state)
    assert metadata == {"w_plus": True, "shape": [14, 512], "name": "A"} == read_safetensors_metadata(path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left behind


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_safetensors({"x": torch.ones(2)}, path, {"version": 1})

    def dies_half_way(tensors, filename, metadata):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"x": torch.zeros(2)}, path, {"version": 2})
    tensors, metadata = load_safetensors(path)
    assert torch.equal(tensors["x"], torch.ones(2)) and metadata == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_conversion_round_trip_gives_identical_outputs(tmp_path):
    net = _small_net().eval()
    net[1].running_mean.normal_()  # buffers travel too
    source = tmp_path / "official.pt"
    torch.save({"g_ema": net.state_dict(), "latent_avg": torch.zeros(4)}, source)
    image = torch.randn(2, 3, 8, 8)

    for expect_cached in (False, True):
        converted = load_converted(source, tmp_path / ".cache" / "net.safetensors", key="g_ema")
        assert converted.from_cache is expect_cached
        copy = _small_net().eval()
        copy[0].weight.data.zero_()
        copy.load_state_dict(converted.state, strict=True)
        with torch.no_grad():
            assert torch.equal(copy(image), net(image))


def test_cache_records_source_and_plain_entries(tmp_path):
    source = tmp_path / "A_matrix.pt"
    torch.save(_a_matrix_checkpoint(), source)
    cache = tmp_path / ".cache" / "directions.safetensors"
    converted = load_converted(source, cache, key="A_matrix", required_keys=("A_matrix", "w_plus"))
    expected_entries = {"learned_directions": 15, "shift_scale": 6.0, "w_plus": True, "num_layers_shift": 8,
                        "shift_dim": 512, "step": 200}  # the Namespace is not plain data: left out
    assert converted.entries == expected_entries
    record = read_safetensors_metadata(cache)
    assert record["entries"] == expected_entries and record["key"] == "A_matrix"
    assert record["source"] == "A_matrix.pt" and record["source_size"] == source.stat().st_size
    assert record["source_sha256"] == checkpoints.sha256_file(source) == converted.source_sha256
    again = load_converted(source, cache, key="A_matrix")
    assert again.from_cache and again.entries == expected_entries and type(again.entries["w_plus"]) is bool


def test_cache_follows_changes_of_the_source(tmp_path, monkeypatch):
    source, cache = tmp_path / "model_ir_se50.pth", tmp_path / ".cache" / "arcface.safetensors"
    torch.save({"w": torch.ones(3)}, source)
    load_converted(source, cache)

    # same bytes, new mtime (copied, touched): the sha256 proves it is the same file; the cache is reused
    os.utime(source, ns=(1, 1))
    reused = load_converted(source, cache)
    assert reused.from_cache and read_safetensors_metadata(cache)["source_mtime_ns"] == 1

    # and after that refresh the next load does not even hash the file
    monkeypatch.setattr(checkpoints, "sha256_file", lambda path: pytest.fail("hashed a file whose stat matched"))
    assert load_converted(source, cache).from_cache
    monkeypatch.undo()

    # same size, other bytes, other mtime: converted again
    torch.save({"w": torch.full((3,), 2.0)}, source)
    assert source.stat().st_size == read_safetensors_metadata(cache)["source_size"]
    changed = load_converted(source, cache)
    assert not changed.from_cache and torch.equal(changed.state["w"], torch.full((3,), 2.0))

    # another key asked from the same cache file: converted again, not served from a copy of the wrong entry
    torch.save({"g_ema": {"w": torch.zeros(1)}, "d": {"v": torch.ones(1)}}, source)
    assert set(load_converted(source, cache, key="d").state) == {"v"}
    assert set(load_converted(source, cache, key="g_ema").state) == {"w"}


def test_a_damaged_cache_is_rebuilt(tmp_path):
    source, cache = tmp_path / "src.pt", tmp_path / "c.safetensors"
    torch.save({"w": torch.ones(3)}, source)
    load_converted(source, cache)
    cache.write_bytes(b"\x00" * 40)
    rebuilt = load_converted(source, cache)
    assert not rebuilt.from_cache and torch.equal(load_safetensors(cache)[0]["w"], torch.ones(3))


def test_expected_sha256_is_enforced(tmp_path):
    source = tmp_path / "src.pt"
    torch.save({"w": torch.ones(3)}, source)
    with pytest.raises(CorruptCheckpointError, match="differs from the expected 00ff"):
        load_converted(source, tmp_path / "c.safetensors", sha256="00ff")
    digest = checkpoints.sha256_file(source)
    assert load_converted(source, tmp_path / "c.safetensors", sha256=digest.upper()).source_sha256 == digest


def test_wrong_top_level_keys_list_expected_and_found(tmp_path):
    source = tmp_path / "e4e-voxceleb.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "latent_avg": torch.zeros(2)}, source)
    with pytest.raises(CheckpointKeysError, match=r"expected top-level keys \['e'\], found \['latent_avg', "
                                                  r"'state_dict'\] \(missing \['e'\]\)"):
        load_converted(source, tmp_path / "c.safetensors", key="e", required_keys=("e",))


def test_a_wrapped_file_where_a_bare_state_dict_belongs_is_named(tmp_path):
    source = tmp_path / "model_ir_se50.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, source)
    with pytest.raises(CorruptCheckpointError, match=r"expected a bare state dict.*'state_dict' \(dict\), 'epoch'"):
        load_converted(source, tmp_path / "c.safetensors")


def test_a_read_only_cache_folder_only_costs_the_shortcut(tmp_path, monkeypatch):
    source = tmp_path / "src.pt"
    torch.save({"e": {"w": torch.ones(3)}}, source)

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(checkpoints, "save_safetensors", read_only)
    with pytest.warns(UserWarning, match="could not write the converted copy .* converted on every load"):
        converted = load_converted(source, tmp_path / "ro" / "c.safetensors", key="e")
    assert torch.equal(converted.state["w"], torch.ones(3)) and not converted.from_cache
