"""A first run on a fresh machine, with no official weights and no downloads, works or says how to make it work."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from flows.cli import app
from storage.video import probe
from tasks.reenact import ReenactConfig, networks_for
from tests.media import DEMO_VIDEOS, PHOTOS

DRIVING = DEMO_VIDEOS / "id00001" / "astronaut01" / "00001.mp4"


@pytest.fixture
def bare_machine(tmp_path, monkeypatch):
    """No official weights in the weights directory, none in torch hub's folder."""
    monkeypatch.setenv("REENACT_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_without_the_official_files_reenactment_uses_the_demo_set_and_says_so_once(bare_machine, caplog):
    config = ReenactConfig()
    assert config.weights == "demo"
    with caplog.at_level(logging.WARNING, logger="tasks.reenact"):
        networks_for(config)
        networks_for(config.model_copy(update={"grid": True}))
    (notice,) = [r.getMessage() for r in caplog.records if "bundled demo set" in r.getMessage()]
    assert str(bare_machine / "weights" / "stylegan-voxceleb.pt") in notice and "weights list" in notice
    output = bare_machine / "first.mp4"
    result = CliRunner().invoke(app, ["reenact-video", str(DRIVING), "--source", str(PHOTOS / "astronaut.jpg"),
                                      "--fps", "5", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert probe(output).frames > 0


def test_asking_for_the_official_set_without_its_files_names_the_file_and_the_demo_set(bare_machine):
    result = CliRunner().invoke(app, ["reenact-video", str(DRIVING), "--source", str(PHOTOS / "astronaut.jpg"),
                                      "--weights", "voxceleb256", "-o", str(bare_machine / "x.mp4")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"File not found at {bare_machine / 'weights'}" in result.output and "--weights demo" in result.output


def test_tuning_without_alexnet_names_the_pixel_only_option(bare_machine):
    result = CliRunner().invoke(app, ["reenact-video", str(DRIVING), "--source", str(PHOTOS / "astronaut.jpg"),
                                      "--weights", "demo", "--tune-steps", "2", "-o", str(bare_machine / "x.mp4")])
    assert result.exit_code == 2 and "--tune-lpips-weight 0" in result.output
    assert not (bare_machine / "x.mp4").exists()
