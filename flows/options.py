"""Command-line options made from a flow's own signature, so that every setting is declared once.

A flow's plain parameters (`store: str = Field("outputs/x.zarr", description=...)`) and the fields of its settings
models (`config: ReenactConfig = ReenactConfig()`, flattened, nested models included) each become one option with
the field's name, type, default and description. A plain parameter without a default, or one marked `POSITIONAL`, is
a positional argument instead. A field that several settings models share (`device` in `reenact` and `metrics`) is
one option that sets all of them. A field may rename its option with `json_schema_extra={"option": "task-runner"}`.

    settings = flow_settings(reenact_video)        # [Setting(name="driving", ...), Setting(name="tune-steps", ...)]
    command = flow_command("reenact-video", reenact_video, on_result=print_summary)   # a click.Command

`--config FILE` (YAML or JSON, shaped like a deployment's `parameters:`) gives values that options on the command
line override; `--show-config` prints the resolved parameters and exits.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from collections.abc import Callable

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

Path_ = tuple[str, ...]  # where a value goes in the flow's keyword arguments: ("config", "tune_steps")
POSITIONAL = {"argument": True}  # json_schema_extra of a flow parameter that the command takes by position


@dataclass(frozen=True)
class Setting:
    """One option of a command and the places of the flow's arguments it fills."""

    name: str  # option name without dashes, e.g. "tune-steps"
    short: str | None  # a one-letter alias ("o" for -o), declared as json_schema_extra={"short": "o"}
    targets: tuple[Path_, ...]
    annotation: Any
    default: Any
    help: str
    required: bool
    argument: bool = False

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def flow_settings(function: Callable) -> list[Setting]:
    """The settings of a flow (or any function whose parameters are plain values and pydantic models)."""
    found: dict[str, Setting] = {}
    function = getattr(function, "fn", function)  # a Prefect flow's wrapped function
    hints = typing.get_type_hints(function)
    for parameter in inspect.signature(function).parameters.values():
        annotation = hints.get(parameter.name, Any)
        model = _model_class(annotation)
        if model is not None:
            for setting in _model_settings(model, (parameter.name,)):
                _add(found, setting)
            continue
        info = parameter.default if isinstance(parameter.default, FieldInfo) else None
        default = info.default if info is not None else parameter.default
        required = default is inspect.Parameter.empty or default is PydanticUndefined
        setting = Setting(
            name=_option_name(parameter.name, info), short=_extra(info).get("short"), targets=((parameter.name,),),
            annotation=annotation,
            default=None if required else default, help=_description(info, parameter.name, function),
            required=required, argument=required or _extra(info).get("argument", False))
        _add(found, setting)
    return list(found.values())


def _model_settings(model: type[BaseModel], prefix: Path_) -> list[Setting]:
    settings = []
    for name, field in model.model_fields.items():
        nested = _model_class(field.annotation)
        if nested is not None:
            settings.extend(_model_settings(nested, prefix + (name,)))
            continue
        required = field.is_required()
        settings.append(Setting(
            name=_option_name(name, field), short=_extra(field).get("short"), targets=(prefix + (name,),),
            annotation=field.annotation,
            default=None if required else field.get_default(call_default_factory=True),
            help=_description(field, name, model), required=required))
    return settings


def _add(found: dict[str, Setting], setting: Setting) -> None:
    """One option per name: a second model with the same field joins the first, if they agree on type and default."""
    if setting.name not in found:
        found[setting.name] = setting
        return
    first = found[setting.name]
    if (first.annotation, first.default, first.argument) != (setting.annotation, setting.default, setting.argument):
        raise TypeError(f"option --{setting.name} would set {'.'.join(first.targets[0])} and "
                        f"{'.'.join(setting.targets[0])}, which differ in type or default: rename one")
    found[setting.name] = dataclasses.replace(first, targets=first.targets + setting.targets)


def _extra(field: FieldInfo | None) -> dict[str, Any]:
    return field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}


def _option_name(name: str, field: FieldInfo | None) -> str:
    return str(_extra(field).get("option", name.replace("_", "-")))


def _description(field: FieldInfo | None, name: str, owner: Any) -> str:
    if field is None or not field.description:
        raise TypeError(f"{getattr(owner, '__qualname__', owner)}: {name!r} has no description; declare it with "
                        "Field(..., description=...) so that the command line and the Prefect UI can explain it")
    return field.description


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The settings model of an annotation (`Model` or `Model | None`), else None."""
    for candidate in (annotation, *_union_members(annotation)):
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return ()


def _click_type(annotation: Any) -> tuple[Any, bool, bool]:
    """(click type, is a flag, takes several values) for a field's annotation."""
    members = _union_members(annotation)
    if members:
        if len(members) != 1:
            return click.STRING, False, False
        annotation = members[0]
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set):
        inner, _, _ = _click_type(typing.get_args(annotation)[0])
        return inner, False, True
    if origin is Literal:
        return click.Choice([str(choice) for choice in typing.get_args(annotation)]), False, False
    if annotation is bool:
        return click.BOOL, True, False
    if annotation in (int, float):
        return {int: click.INT, float: click.FLOAT}[annotation], False, False
    return click.STRING, False, False  # str, paths and anything else pass through as text; pydantic parses it


HELP_WIDTH = (100, 120)  # (least, most) columns of --help: no word is broken, whatever the terminal's width


class HelpContext(click.Context):
    """Help laid out at least HELP_WIDTH[0] wide: in a narrow terminal (or none) lines wrap, they are not cut."""

    def make_formatter(self) -> click.HelpFormatter:
        width = max(self.terminal_width or shutil.get_terminal_size().columns, HELP_WIDTH[0])
        return self.formatter_class(width=min(width, HELP_WIDTH[1]), max_width=HELP_WIDTH[1])


class FlowCommand(click.Command):
    context_class = HelpContext


def click_parameter(setting: Setting) -> click.Parameter:
    kind, flag, several = _click_type(setting.annotation)
    if setting.argument:
        return click.Argument([setting.dest], type=kind, required=setting.required, help=setting.help,
                                 default=None if setting.required else setting.default)
    default = setting.default
    if several:
        default = tuple(default) if default else ()
    declarations = [f"--{setting.name}/--no-{setting.name}" if flag else f"--{setting.name}"]
    declarations += [f"-{setting.short}"] if setting.short else []
    return click.Option([*declarations, setting.dest], type=kind, default=default, multiple=several,
                        required=setting.required, show_default=not setting.required and default not in (None, ()),
                        help=setting.help)


def arguments(settings: list[Setting], values: dict[str, Any], given: set[str],
              from_file: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flow's keyword arguments: the file's values, overridden by the options given on the command line.

    Options left at their default add nothing, so the settings models' own defaults (and a file's values) stand."""
    result: dict[str, Any] = json.loads(json.dumps(from_file or {}))  # a deep copy of plain data
    for setting in settings:
        if setting.dest not in given:
            continue
        value = values[setting.dest]
        if isinstance(value, tuple):
            value = list(value) or None
        for target in setting.targets:
            place = result
            for key in target[:-1]:
                place = place.setdefault(key, {})
            place[target[-1]] = value
    return result


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping of the flow's parameters (what a deployment's `parameters:` holds)."""
    import yaml

    text = Path(path).read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of parameters, e.g. 'config: {{fps: 25}}'")
    return data


def flow_command(name: str, function: Callable, on_result: Callable[[Any], int | None],
                 before: Callable[[dict[str, Any]], None] | None = None) -> click.Command:
    """A click command running `function` with its generated options; `on_result` prints the result and returns the
    exit code; `before` checks the arguments (setup problems as one line) before the flow starts."""
    settings = flow_settings(function)
    target = getattr(function, "fn", function)

    def run(config: Path | None, show_config: bool, **values: Any) -> None:
        context = click.get_current_context()
        given = {dest for dest in values
                 if context.get_parameter_source(dest) is not click.core.ParameterSource.DEFAULT}
        given |= {s.dest for s in settings if s.argument and values.get(s.dest) is not None}
        kwargs = _complete(target, arguments(settings, values, given, read_config_file(config) if config else None))
        if show_config:
            import yaml

            click.echo(yaml.safe_dump(_plain(kwargs), sort_keys=False).rstrip())
            return
        if before is not None:
            before(kwargs)
        code = on_result(function(**kwargs))
        if code:
            context.exit(code)

    parameters = [click_parameter(setting) for setting in settings]
    parameters += [
        click.Option(["--config"], type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="A YAML or JSON file of parameters (shaped like a deployment's 'parameters:'); options "
                          "given here override it."),
        click.Option(["--show-config"], is_flag=True, help="Print the resolved parameters and exit."),
    ]
    return FlowCommand(name, callback=run, params=parameters, help=inspect.getdoc(target))


def _complete(function: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of `function`: settings models built (and checked, so bad values fail here with the field's
    name) from their dicts, defaults filled in."""
    hints = typing.get_type_hints(function)
    for key, value in kwargs.items():
        model = _model_class(hints.get(key, Any))
        if model is not None and isinstance(value, dict):
            kwargs[key] = model.model_validate(value)
    bound = inspect.signature(function).bind_partial(**kwargs)
    bound.apply_defaults()
    return {key: value.get_default(call_default_factory=True) if isinstance(value, FieldInfo) else value
            for key, value in bound.arguments.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
