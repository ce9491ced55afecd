"""Stage configs: file plus key=value overrides, refusal of unknown fields, and the copy saved beside a run."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from training.common.config import load_config, parse_overrides
from training.encoder import EncoderTrainingConfig
from training.generator import GeneratorTrainingConfig


def test_overrides_are_typed_yaml_values_and_reach_nested_keys():
    assert parse_overrides(["steps=100", "lr=0.5", "xflip=false", "clips=[a/b/c, d/e/f]", "init=", "a.b.c=x"]) == {
        "steps": 100, "lr": 0.5, "xflip": False, "clips": ["a/b/c", "d/e/f"], "init": None, "a": {"b": {"c": "x"}}}
    assert load_config(GeneratorTrainingConfig, None, ["lr=2e-3"]).lr == 0.002  # YAML 1.1 reads '2e-3' as text
    with pytest.raises(ValueError, match="not key=value"):
        parse_overrides(["steps"])


def test_file_then_overrides_then_defaults(tmp_path):
    path = tmp_path / "gen.yaml"
    path.write_text("size: 64\nsteps: 500\naugment: ada\n")
    config = load_config(GeneratorTrainingConfig, path, ["steps=20", "channel_max=64"])
    assert (config.size, config.steps, config.augment, config.channel_max) == (64, 20, "ada", 64)
    assert config.r1 == 10.0 and config.d_reg_every == 16 and config.g_reg_every == 4  # rosinality's defaults
    assert config.generator_config() == {"size": 64, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 1,
                                         "channel_max": 64}
    json_path = tmp_path / "enc.json"
    json_path.write_text(json.dumps({"generator": "g.safetensors", "lpips_weight": 0.8}))
    encoder = load_config(EncoderTrainingConfig, json_path, [])
    assert (encoder.generator, encoder.lpips_weight, encoder.delta_weight) == ("g.safetensors", 0.8, 2e-4)


def test_unknown_or_invalid_fields_are_refused(tmp_path):
    with pytest.raises(ValidationError, match="stepz"):
        load_config(GeneratorTrainingConfig, None, ["stepz=3"])
    with pytest.raises(ValidationError, match="augment"):
        load_config(GeneratorTrainingConfig, None, ["augment=sometimes"])
    with pytest.raises(ValidationError, match="num_layers"):
        load_config(EncoderTrainingConfig, None, ["num_layers=34"])
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(GeneratorTrainingConfig, path, [])
