"""`reenact`: the command line. One sub-command per flow, whose options are the flow's own parameters and settings
fields (`flows.options`: declared once, in the flow's signature and its settings models); the training stages take
a config file and `key=value` settings over their config model. A flow's module is imported only when its command
runs, so `--help` and start-up stay quick."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from flows.errors import is_user_error
from flows.options import FlowCommand, HelpContext

console = Console(soft_wrap=True)  # messages stay on one line, whole paths included


@dataclass(frozen=True)
class FlowEntry:
    """A command that runs a flow: `flow` and `check` are "module:function"; `check(**arguments)` raises on setup
    problems (missing weights, an unknown detector) before the flow starts, so they print as one line."""

    flow: str
    check: str | None = None


FLOWS: dict[str, FlowEntry] = {
    "make-synthetic-dataset": FlowEntry("flows.make_synthetic_dataset:make_synthetic_dataset"),
    "preprocess-dataset": FlowEntry("flows.preprocess_dataset:preprocess_dataset", "flows.preprocess_dataset:check"),
    "store-verify": FlowEntry("flows.store_verify:store_verify"),
    "encode-dataset": FlowEntry("flows.encode_dataset:encode_dataset", "flows.encode_dataset:check"),
    "reenact-video": FlowEntry("flows.reenact_video:reenact_video", "flows.reenact_video:check"),
    "reenact-dataset": FlowEntry("flows.reenact_dataset:reenact_dataset", "flows.reenact_dataset:check"),
    "evaluate": FlowEntry("flows.evaluate:evaluate", "flows.evaluate:check"),
    "benchmark-report": FlowEntry("flows.benchmark_report:benchmark_report"),
    "demo": FlowEntry("flows.demo:demo"),
    "train-demo-weights": FlowEntry("flows.train_demo_weights:train_demo_weights"),
}


@dataclass(frozen=True)
class TrainingEntry:
    """A training stage: its flow and config model ("module:name") and an example of `key=value` settings."""

    flow: str
    config: str
    example: str


TRAINING: dict[str, TrainingEntry] = {
    "train-generator": TrainingEntry(
        "flows.train_generator:train_generator", "training.generator:GeneratorTrainingConfig",
        "store=outputs/synthetic.zarr size=64 steps=2000 augment=ada"),
    "train-encoder": TrainingEntry(
        "flows.train_encoder:train_encoder", "training.encoder:EncoderTrainingConfig",
        "generator=outputs/train-generator/generator.safetensors channel_max=64"),
    "train-directions": TrainingEntry(
        "flows.train_directions:train_directions", "training.directions:DirectionsTrainingConfig",
        "generator=outputs/train-generator/generator.safetensors synthetic_steps=2000 real_steps=0 paired_steps=1000"),
    "train-feature-transformer": TrainingEntry(
        "flows.train_feature_transformer:train_feature_transformer",
        "training.feature_transformer:FeatureTransformerTrainingConfig",
        "generator=runs/g/generator.safetensors directions=runs/a/directions.safetensors steps=5000"),
    "train-joint": TrainingEntry(
        "flows.train_joint:train_joint", "training.joint:JointTrainingConfig",
        "--config training/configs/demo-joint.yaml out=runs/joint install_dir=runs/joint/weights"),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _docstring(path: str) -> str:
    """A function's (or class's) docstring read from its module's source, without importing the module."""
    module, _, name = path.partition(":")
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return ast.get_docstring(node) or ""
    return ""


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


@contextmanager
def user_errors():
    """Errors in what the user asked for print as one line and exit 2, without a traceback."""
    try:
        yield
    except Exception as err:
        if not is_user_error(err):
            raise
        console.print(f"[red]error:[/] {err}", highlight=False)
        raise SystemExit(2) from err


def _print(summary) -> int:
    for line in summary.lines():
        console.print(line, highlight=False, markup=False)  # clip names and paths may hold '[...]'
    return summary.exit_code


class Commands(click.Group):
    """The `reenact` group: the flow and training commands are built when they run (or show their help)."""

    context_class = HelpContext
    command_class = FlowCommand

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *FLOWS, *TRAINING])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in FLOWS:
            return _flow_command(name, FLOWS[name])
        if name in TRAINING:
            return _training_command(name, TRAINING[name])
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """One line per command, read without importing the flows."""
        rows = []
        for name in self.list_commands(ctx):
            if name in FLOWS or name in TRAINING:
                rows.append((name, _first_sentence(_docstring((FLOWS.get(name) or TRAINING[name]).flow))))
            else:
                rows.append((name, super().get_command(ctx, name).get_short_help_str(limit=200)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _flow_command(name: str, entry: FlowEntry) -> click.Command:
    from flows.options import flow_command

    from tasks.prefect_api import temporary_api_in_background

    check = _load(entry.check) if entry.check else None

    def checked(arguments: dict[str, Any]) -> None:
        """The flow's checks, while Prefect's temporary API starts in the background (never when they fail)."""
        with temporary_api_in_background() as api_ready:
            if check is not None:
                with user_errors():
                    check(**arguments)
            api_ready()

    command = flow_command(name, _load(entry.flow), on_result=_print, before=checked)
    callback = command.callback

    def run(**values: Any) -> None:
        with user_errors():
            callback(**values)

    command.callback = run
    return command


def _training_command(name: str, entry: TrainingEntry) -> click.Command:
    def run(overrides: tuple[str, ...], config: Path | None, processes: int, show_config: bool) -> None:
        from training.common.config import config_text, load_config

        with user_errors():
            settings = load_config(_load(entry.config), config, overrides)
            if show_config:
                console.print(config_text(settings), highlight=False)
                return
            summary = _load(entry.flow)(config=settings, processes=processes)
        for line in summary.lines():  # a run that did not finish raised
            console.print(line, highlight=False, markup=False)

    return FlowCommand(name, callback=run, help=_docstring(entry.flow), params=[
        click.Argument(["overrides"], nargs=-1),
        click.Option(["--config"], type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="A YAML or JSON file of settings."),
        click.Option(["--processes"], type=int, default=1, show_default=True,
                     help="Processes on this machine, one per GPU (torchrun; gloo on CPUs)."),
        click.Option(["--show-config"], is_flag=True, help="Print the resolved settings and exit."),
    ], epilog=f"Settings are key=value over the config file, e.g. {entry.example} (all fields: --show-config).")


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
def app() -> None:
    """One-shot neural face reenactment pipeline (Prefect flows over a Zarr clip store)."""


@app.command("store-info")
@click.argument("store", type=click.Path(path_type=Path))
def store_info(store: Path) -> None:
    """Show the manifest of a clip store: one line per clip with its status and frames, then every failed clip with
    its reason, and the counts."""
    from rich.markup import escape
    from rich.table import Table

    from storage.manifest import is_missing, read_manifest
    from storage.store import ClipStore

    with user_errors():
        clip_store = ClipStore.open(store, create=False)
    manifest = read_manifest(clip_store.manifest_path)
    text = lambda value: "" if is_missing(value) else escape(str(value))  # noqa: E731  (NaN: an empty parquet cell)
    table = Table("clip", "status", "frames", "fps", "faces", "seconds")
    for row in manifest.to_dict("records"):
        key = f"{row['identity']}/{row['video']}/{row['clip']}"
        name = text(row.get("name"))
        table.add_row(escape(key) + (f"\n[dim]{name}[/]" if name and name != escape(key) else ""), text(row["status"]),
                      _fmt(row.get("frames")), _fmt(row.get("fps")), _fmt(row.get("faces_max")),
                      _fmt(row.get("seconds_total")))
    console.print(table)
    failed = manifest[manifest["status"] == "failed"] if len(manifest) else manifest
    for row in failed.to_dict("records"):
        console.print(f"[red]failed[/] {escape(row['identity'])}/{escape(row['video'])}/{escape(row['clip'])}: "
                      f"{text(row.get('error'))}", highlight=False)
    counts = manifest["status"].value_counts().to_dict() if len(manifest) else {}
    console.print(f"{len(manifest)} rows: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "failed")))
    console.print(f"{len(clip_store.clips())} clips published in {clip_store.root}")


@app.group("weights")
def weights_group() -> None:
    """The weights directory: what is present, what is missing, conversions."""


WEIGHTS_DIR_OPTION = click.option("--weights-dir", type=click.Path(path_type=Path), default=None,
                                  help="Weights directory (default: $REENACT_WEIGHTS_DIR, else weights/ in the project).")


@weights_group.command("list")
@WEIGHTS_DIR_OPTION
@click.option("--set", "weights_set", default=None, help="Only the files of one set: 'voxceleb256' (official) or 'demo'.")
def weights_list(weights_dir: Path | None, weights_set: str | None) -> None:
    """List the known weight files: which are present, which are missing, and where each one comes from."""
    from storage.weights import WeightsRegistry, format_status

    with user_errors():
        registry = WeightsRegistry(weights_dir)
        rows = registry.status(weights_set)
    console.print(f"weights directory: {registry.root}")
    console.print(format_status(rows), highlight=False)


@weights_group.command("flame-to-npz")
@click.argument("pkl", type=click.Path(path_type=Path))
@click.argument("npz", type=click.Path(path_type=Path))
@click.option("--landmark-embedding", type=click.Path(path_type=Path), default=None,
              help="DECA's landmark_embedding.npy (default: beside the .pkl).")
def flame_to_npz(pkl: Path, npz: Path, landmark_embedding: Path | None) -> None:
    """Convert FLAME's pickle (and DECA's landmark embedding) to one .npz, read without any pickled code."""
    from models.flame import convert_flame_pkl_to_npz

    with user_errors():
        out = convert_flame_pkl_to_npz(pkl, npz, landmark_embedding)
    console.print(f"wrote {out}")


def _fmt(value) -> str:
    if value is None or value != value:  # None or NaN
        return ""
    return f"{value:.2f}" if isinstance(value, float) and not value.is_integer() else str(int(value) if isinstance(value, float) else value)


def main() -> None:
    app(prog_name="reenact")


if __name__ == "__main__":
    main()
