"""`train-demo-weights`: the recipe of the bundled `demo` set, end to end, with the project's own flows.

    make-synthetic-dataset (training world, seed 1)  ->  preprocess-dataset  ->  train-generator (a GAN)
        ->  train-encoder (with G's synthesis network as its decoder, from the GAN: the demo G)
        ->  encode-dataset (synth-regressor + the new encoder)  ->  train-directions (paired phase)
        ->  train-feature-transformer (G and A frozen, two frames of one clip)
        ->  held-out world (seed 2): `evaluate` cross-reenactment against the TRUE parameters  ->  provenance.json

Each stage's settings are `training/configs/demo-<stage>.yaml`, with the store, run folders and weights of `work`.
Every stage resumes or skips what it finished, so a stopped recipe continues where it was. With `install`, the
four fp16 safetensors and the provenance file are copied into `models/data/demo/`, where the weights registry
finds the `demo` set when the weights directory has none of its own.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from prefect import flow, task
from pydantic import Field

from flows.encode_dataset import encode_dataset
from flows.make_synthetic_dataset import make_synthetic_dataset
from flows.preprocess_dataset import preprocess_dataset
from flows.train_directions import train_directions
from flows.train_encoder import train_encoder
from flows.train_feature_transformer import train_feature_transformer
from flows.train_generator import train_generator
from storage.files import atomic_path, sha256_file
from storage.settings import PROJECT_ROOT
from storage.weights import BUNDLED_DIR, WEIGHT_FILES, WEIGHT_SETS
from flows.evaluate import evaluate
from flows.summary import FlowSummary, publish, shown
from tasks.encode import EncodeConfig
from tasks.evaluate import SUMMARY_FILE, EvaluateConfig
from tasks.metrics import MetricsConfig
from tasks.preprocess import PreprocessConfig
from tasks.reenact import ReenactConfig
from tasks.synthesize import SynthConfig
from training.common.config import load_config
from training.common.loop import TrainingSummary
from training.directions import DirectionsTrainingConfig
from training.encoder import EncoderTrainingConfig
from training.feature_transformer import FeatureTransformerTrainingConfig
from training.generator import GeneratorTrainingConfig

CONFIGS = PROJECT_ROOT / "training" / "configs"
TRAINING_WORLD = SynthConfig(identities=32, videos_per_identity=2, clips_per_video=2, min_seconds=2, max_seconds=3,
                             seed=1)
HELDOUT_WORLD = SynthConfig(identities=6, videos_per_identity=1, clips_per_video=1, min_seconds=2, max_seconds=2,
                            seed=2)
PROVENANCE = "provenance.json"
HELDOUT_FIGURES = {  # provenance name -> evaluate's frame metric (cross protocol, against the true parameters)
    "apd_reenacted": "truth_apd", "apd_static": "static_truth_apd", "apd_driving": "driving_truth_apd",
    "aed_reenacted": "truth_aed", "aed_static": "static_truth_aed", "aed_driving": "driving_truth_aed",
    "csim": "csim",
}


class DemoWeightsSummary(FlowSummary):
    weights_dir: str  # <work>/weights, holding demo/{generator,encoder,directions,feature_transformer}.safetensors
    provenance: str
    installed: str | None  # models/data/demo when installed
    heldout: dict[str, float]

    def lines(self) -> list[str]:
        return [f"weights:    {shown(self.weights_dir)}", f"provenance: {shown(self.provenance)}",
                *([f"installed:  {self.installed}"] if self.installed else []),
                "held out:   " + ", ".join(f"{key} {value:.4g}" for key, value in self.heldout.items())]


@flow(name="train-demo-weights", log_prints=True)
def train_demo_weights(
    work: str = Field("outputs/demo-weights", description="Folder for the worlds, stores, runs and weights."),
    install: bool = Field(False, description="Copy the trained set and its provenance into models/data/demo."),
) -> DemoWeightsSummary:
    """Reproduce the bundled demo set: synthetic world, preprocess, train G, the encoder and A with the configs in
    training/configs/demo-*.yaml, then measure them on held-out synthetic people (resumes what it finished).

    Writes each stage's settings, figures and the files' sha256 to provenance.json."""
    root = Path(work)
    weights = root / "weights"
    world = make_synthetic_dataset(out=str(root / "world"), config=TRAINING_WORLD)
    store = str(root / "world.zarr")
    preprocess_dataset(input=world.out, store=store, config=PreprocessConfig(fps=25))

    generator = train_generator(config=_stage_config(GeneratorTrainingConfig, "generator", store, root))
    encoder = train_encoder(config=_stage_config(EncoderTrainingConfig, "encoder", store, root,
                                                 generator=generator.export))
    decoder = _decoder_of(encoder)
    _install_file(decoder, weights, "demo-generator")
    _install_file(encoder.export, weights, "demo-encoder")
    encode_dataset(store=store, config=EncodeConfig(face3d="synth-regressor", encoder="demo-encoder",
                                                    weights_dir=str(weights)))
    directions = train_directions(config=_stage_config(DirectionsTrainingConfig, "directions", store, root,
                                                       generator=decoder, weights_dir=str(weights)))
    _install_file(directions.export, weights, "demo-directions")
    transformer = train_feature_transformer(config=_stage_config(
        FeatureTransformerTrainingConfig, "feature-transformer", store, root, generator=decoder,
        directions=directions.export, weights_dir=str(weights)))
    _install_file(transformer.export, weights, "demo-feature-transformer")

    heldout = heldout_figures(heldout_evaluation(root, str(weights)))

    provenance = write_provenance(weights / "demo" / PROVENANCE, {
        "generator": generator, "encoder": encoder, "directions": directions, "feature_transformer": transformer},
        heldout, weights)
    installed = _install_bundle(weights / "demo") if install else None
    summary = DemoWeightsSummary(weights_dir=str(weights), provenance=str(provenance), installed=installed,
                                 heldout={k: v for k, v in heldout.items() if isinstance(v, float)})
    publish(summary, "train-demo-weights", link=summary.provenance)
    return summary


def _stage_config(cls, stage: str, store: str, root: Path, **settings):
    """training/configs/demo-<stage>.yaml with this recipe's store and run folder (and `settings`) over it."""
    overrides = [f"store={store}", f"out={root / f'train-{stage}'}", *(f"{k}={v}" for k, v in settings.items())]
    return load_config(cls, CONFIGS / f"demo-{stage}.yaml", overrides)


def _decoder_of(encoder: TrainingSummary) -> str:
    """The G the encoder stage trained as its decoder (demo-encoder.yaml's decoder_lr), else the GAN it inverted."""
    decoder = Path(encoder.out) / "generator.safetensors"
    if decoder.is_file():
        return str(decoder)
    return json.loads((Path(encoder.out) / "config.json").read_text())["generator"]


@task(name="install-weights")
def _install_file(export: str, weights: Path, name: str) -> Path:
    """Copy a run's export to where the registry looks for `name` in `weights` (whole or not at all)."""
    return _copy_whole(Path(export), weights / WEIGHT_FILES[name].filename)


def heldout_evaluation(root: Path, weights_dir: str | None = None) -> Path:
    """The held-out world (people the demo set never saw) made and preprocessed under `root`, and `evaluate`'s
    cross-reenactment of it against the true parameters, with the demo set of `weights_dir` (None: the bundled
    one); returns the evaluation's summary.json."""
    world = make_synthetic_dataset(out=str(root / "heldout"), config=HELDOUT_WORLD)
    store = str(root / "heldout.zarr")
    preprocess_dataset(input=world.out, store=store, config=PreprocessConfig(fps=25))
    evaluation = evaluate(config=EvaluateConfig(
        store=store, out=str(root / "heldout-evaluation"), protocols=["cross"], cross_count=12, truth=world.truth,
        fid=False, reenact=ReenactConfig(weights="demo", weights_dir=weights_dir),
        metrics=MetricsConfig(identity="dlib")))
    return Path(evaluation.out) / SUMMARY_FILE


def heldout_figures(summary_path: Path) -> dict[str, Any]:
    """The held-out errors of an evaluation's summary.json: means over frames, the networks that measured them."""
    cross = json.loads(summary_path.read_text())["protocols"]["cross"]
    figures: dict[str, Any] = {name: cross["metrics"][metric]["mean"] for name, metric in HELDOUT_FIGURES.items()}
    figures.update(pairs=cross["pairs"], frames=cross["frames"], net3d=cross["metrics"]["truth_apd"]["network"],
                   identity=cross["metrics"]["csim"]["network"], evaluation=str(summary_path.parent))
    return figures


def write_provenance(path: Path, runs: dict[str, TrainingSummary], heldout: dict[str, Any], weights: Path) -> Path:
    """What made the demo set: each stage's config, steps, speed and losses, the worlds' seeds, the held-out errors,
    the files' sha256 and the machine."""
    record: dict[str, Any] = {
        "recipe": "flows/train_demo_weights.py (reenact train-demo-weights)",
        "training_world": TRAINING_WORLD.model_dump(), "heldout_world": HELDOUT_WORLD.model_dump(),
        "stages": {stage: {
            "config": json.loads((Path(run.out) / "config.json").read_text()),
            "steps": run.steps, "seconds_this_run": round(run.seconds, 1),
            "steps_per_second": round(run.steps_per_second, 3),
            "final_losses": run.final_losses,
        } for stage, run in runs.items()},
        "heldout": heldout,
        "files": {name: {"file": WEIGHT_FILES[name].filename, "bytes": (weights / WEIGHT_FILES[name].filename).stat().st_size,
                         "sha256": sha256_file(weights / WEIGHT_FILES[name].filename)}
                  for name in WEIGHT_SETS["demo"]},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
    }
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _install_bundle(source: Path) -> str:
    """The set and its provenance into models/data/demo (each file replaced whole)."""
    target = BUNDLED_DIR / "demo"
    for path in sorted(source.iterdir()):
        _copy_whole(path, target / path.name)
    return str(target)


def _copy_whole(source: Path, target: Path) -> Path:
    """`source` copied to `target`, which appears whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:
        shutil.copyfile(source, partial)
    return target
