"""The `reenact train-*` commands the flows provide: settings from a file and key=value, errors as one line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from flows.cli import app
from tests.training import QUICK, TINY_G, flat_colour_frames, write_store


def test_show_config_resolves_the_file_and_the_overrides(tmp_path):
    path = tmp_path / "enc.yaml"
    path.write_text("channel_max: 64\nsteps: 300\n")
    result = CliRunner().invoke(app, ["train-encoder", "--config", str(path), "steps=20", "lpips_weight=0.8",
                                      "--show-config"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["channel_max"], shown["steps"], shown["lpips_weight"], shown["generator"]) == (64, 20, 0.8,
                                                                                                "demo-generator")


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["train-generator", "augment=sometimes", "--show-config"])
    assert result.exit_code == 2 and "error" in result.output and "augment" in result.output
    missing = CliRunner().invoke(app, ["train-generator", "store=/nonexistent.zarr", "steps=1",
                                       f"out={tmp_path / 'run'}"])
    assert missing.exit_code == 2 and "no clip store at /nonexistent.zarr" in missing.output
    assert not (tmp_path / "run").exists()  # nothing written before the data is found


def test_a_short_run_prints_where_its_weights_are(tmp_path):
    write_store(tmp_path / "s.zarr", flat_colour_frames(8, 32), clips=1)
    settings = {**TINY_G, **QUICK, "steps": 2, "store": tmp_path / "s.zarr", "out": tmp_path / "run"}
    result = CliRunner().invoke(app, ["train-generator", *(f"{key}={value}" for key, value in settings.items())])
    assert result.exit_code == 0, result.output
    assert "generator: steps 0->2 on 1 process(es)" in result.output
    assert f"weights:    {tmp_path / 'run' / 'generator.safetensors'}" in result.output.replace("\n", "")
    assert (tmp_path / "run" / "checkpoints" / "step-0000002.pt").is_file()
