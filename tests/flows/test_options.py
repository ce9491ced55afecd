"""The command line is made from the flows' own signatures: one option per setting, with its default and help."""

from __future__ import annotations

import inspect
import typing

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel, Field

from flows.cli import FLOWS, _flow_command, _load, app
from flows.options import _model_class, flow_settings
from storage.weights import AUTO_SET, choose_set


def _fields(model: type[BaseModel], prefix: tuple[str, ...]) -> dict[tuple[str, ...], object]:
    """Every leaf field of a settings model, nested models walked, by its path in the flow's arguments."""
    found = {}
    for name, field in model.model_fields.items():
        nested = _model_class(field.annotation)
        found.update(_fields(nested, prefix + (name,)) if nested else {prefix + (name,): field})
    return found


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_setting_of_a_flow_has_exactly_one_option_with_its_default_and_help(name):
    flow = _load(FLOWS[name].flow)
    function = flow.fn
    hints = typing.get_type_hints(function)
    expected = {}
    for parameter in inspect.signature(function).parameters.values():
        model = _model_class(hints[parameter.name])
        expected.update(_fields(model, (parameter.name,)) if model else {(parameter.name,): parameter.default})
    settings = flow_settings(flow)
    owners = {path: [s for s in settings if path in s.targets] for path in expected}
    assert all(len(found) == 1 for found in owners.values()), {p: [s.name for s in o] for p, o in owners.items()
                                                              if len(o) != 1}
    assert sum(len(s.targets) for s in settings) == len(expected)  # and no option sets anything else
    command = _flow_command(name, FLOWS[name])
    params = {param.name: param for param in command.params}
    for path, field in expected.items():
        (setting,) = owners[path]
        param = params[setting.dest]
        assert param.help == field.description, path
        default = field.get_default(call_default_factory=True) if not field.is_required() else None
        shown = tuple(default) if isinstance(default, list) else default
        assert param.default == (shown if shown is not None or not param.multiple else ()), path
        assert param.required == field.is_required(), path


def test_a_field_shared_by_two_models_is_one_option_that_sets_both():
    settings = {s.name: s for s in flow_settings(_load(FLOWS["evaluate"].flow))}
    assert settings["device"].targets == (("config", "reenact", "device"), ("config", "metrics", "device"))
    assert settings["kid-seed"].targets == (("config", "metrics", "seed"),)


class First(BaseModel):
    seed: int = Field(0, description="one seed")


class Second(BaseModel):
    seed: int = Field(1, description="another seed")


def test_fields_that_differ_under_one_name_are_refused_when_the_command_is_made():
    def both(first: First = First(), second: Second = Second()) -> None:
        """Two models."""

    with pytest.raises(TypeError, match="--seed would set first.seed and second.seed"):
        flow_settings(both)


def test_a_parameter_without_a_description_is_refused():
    def bare(store: str = "x") -> None:
        """No description."""

    with pytest.raises(TypeError, match="'store' has no description"):
        flow_settings(bare)


def test_show_config_resolves_file_and_options_with_the_options_winning(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"config": {"tune_steps": 7, "crf": 30}, "mode": "self"}))
    result = CliRunner().invoke(app, ["reenact-video", "clip.mp4", "--config", str(config), "--crf", "20",
                                      "-o", "out.mp4", "--show-config"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["driving"] == "clip.mp4" and resolved["output"] == "out.mp4" and resolved["mode"] == "self"
    assert resolved["config"]["tune_steps"] == 7 and resolved["config"]["crf"] == 20
    # the model's default ('auto', resolved to the set it stands for), not restated by the command line
    assert resolved["config"]["weights"] == choose_set(AUTO_SET)[0]


def test_one_option_sets_every_model_that_shares_the_field():
    result = CliRunner().invoke(app, ["evaluate", "--store", "s.zarr", "--device", "cpu", "--protocol", "self",
                                      "--kid-seed", "3", "--show-config"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)["config"]
    assert resolved["reenact"]["device"] == resolved["metrics"]["device"] == "cpu"
    assert resolved["protocols"] == ["self"] and resolved["metrics"]["seed"] == 3 and resolved["seed"] == 0


def test_a_bad_value_names_the_field_in_one_line():
    result = CliRunner().invoke(app, ["reenact-video", "clip.mp4", "--crf", "99", "--show-config"])
    assert result.exit_code == 2
    assert "crf" in result.output and "less than or equal to 51" in result.output
    assert "Traceback" not in result.output


def test_help_keeps_whole_defaults_in_a_narrow_terminal():
    result = CliRunner().invoke(app, ["reenact-video", "--help"], terminal_width=50)
    assert result.exit_code == 0
    assert "outputs/reenacted.mp4" in result.output and "…" not in result.output
    assert "Positional arguments:" in result.output and "The driving video (a file)" in result.output


def test_the_command_list_needs_no_flow_imported():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from flows.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'prefect', 'flows.reenact_video') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
