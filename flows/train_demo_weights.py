"""`train-demo-weights`: the recipe of the bundled `demo` set, end to end, with the project's own flows.

    make-synthetic-dataset (training world, demo-world.yaml)  ->  preprocess-dataset     (or world="direct": the
                                                                                           world rendered straight
                                                                                           into the store)
        ->  train-generator (a GAN)  ->  train-encoder (with G's synthesis network as its decoder: the demo G)
        ->  encode-dataset (synth-regressor + the new encoder)  ->  train-directions
        ->  train-feature-transformer (G and A frozen, two frames of one clip)
        ->  held-out world (seed 2): `evaluate` cross-reenactment against the TRUE parameters, identity retrieval,
            self-reenactment pixel error  ->  provenance.json

The stages are `training.demo_recipe`'s (which also runs them without Prefect, one by one, on a GPU machine);
their settings are `training/configs/demo[-gpu]-<stage>.yaml` with the store, run folders and weights of `work`.
Every stage resumes or skips what it finished, so a stopped recipe continues where it was. With `install`, the
four fp16 safetensors and the provenance file are copied into `models/data/demo/`, where the weights registry
finds the `demo` set when the weights directory has none of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from prefect import flow
from pydantic import Field

from flows.encode_dataset import encode_dataset
from flows.evaluate import evaluate
from flows.make_synthetic_dataset import make_synthetic_dataset
from flows.preprocess_dataset import preprocess_dataset
from flows.summary import FlowSummary, publish, shown
from models.directions import PARAM_NAMES
from storage.store import ClipStore
from tasks.encode import EncodeConfig
from tasks.evaluate import EvaluateConfig, generate
from tasks.evaluation_summary import EvaluationSummary
from tasks.metrics import MetricsConfig
from tasks.preprocess import PreprocessConfig
from tasks.reenact import CLIP_PREFIX, ReenactConfig, networks_for, prepare_inputs
from training.demo_recipe import (
    HELDOUT_WORLD,
    Work,
    install_bundle,
    train_stage,
    write_provenance,
    write_world,
)

HELDOUT_FIGURES = {  # provenance name -> evaluate's frame metric (cross protocol, against the true parameters)
    "apd_reenacted": "truth_apd", "apd_static": "static_truth_apd", "apd_driving": "driving_truth_apd",
    "aed_reenacted": "truth_aed", "aed_static": "static_truth_aed", "aed_driving": "driving_truth_aed",
    "csim": "csim", "identity_retrieval": "identity_retrieval",
}
# per parameter: APD's angles in degrees, AED's jaw and expressions min-max normalised by the ranges table
PARAMETER_METRICS = {name: f"apd_{name}" if index < 3 else f"aed_{name}" for index, name in enumerate(PARAM_NAMES)}


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
    configs: Literal["cpu", "gpu"] = Field("cpu", description="Config set: 'cpu' (training/configs/demo-<stage>.yaml, the bundled set's) or 'gpu' (demo-gpu-<stage>.yaml: G at 128 px, long runs)."),
    world: Literal["video", "direct"] = Field("video", description="'video': the world as mp4s, preprocessed with dlib like real data; 'direct': rendered straight into the store with its true landmarks."),
) -> DemoWeightsSummary:
    """Reproduce the bundled demo set: a synthetic world, then G, the encoder, A and the Feature Transformer trained
    with training/configs/demo[-gpu]-*.yaml, measured on held-out synthetic people (resumes what it finished).

    Writes each stage's settings, figures and the files' sha256 to provenance.json. Without Prefect, stage by stage
    (e.g. on a GPU machine with torch alone): python -m training.demo_recipe --help."""
    recipe = Work(work, configs)
    config = recipe.world_config()
    if world == "video":
        videos = make_synthetic_dataset(out=str(recipe.root / "world"), config=config)
        preprocess_dataset(input=videos.out, store=str(recipe.store), config=PreprocessConfig(fps=25))
        written = {"written": "as video, then preprocess-dataset (dlib)", "frames": videos.frames}
    else:
        written = {"written": "directly (true landmarks)", "frames": write_world(recipe, config)["frames"]}
    write_provenance(recipe, world={**config.model_dump(), **written})

    for stage in ("generator", "encoder"):
        train_stage(recipe, stage)
    encode_dataset(store=str(recipe.store), config=EncodeConfig(face3d="synth-regressor", encoder="demo-encoder",
                                                                weights_dir=str(recipe.weights)))
    for stage in ("directions", "feature-transformer"):
        train_stage(recipe, stage)

    heldout = heldout_figures(heldout_evaluation(recipe.root, str(recipe.weights)))
    heldout.update(self_reenactment_error(recipe.root / "heldout.zarr", str(recipe.weights)))
    provenance = write_provenance(recipe, heldout=heldout)
    installed = str(install_bundle(recipe)) if install else None
    summary = DemoWeightsSummary(weights_dir=str(recipe.weights), provenance=str(provenance), installed=installed,
                                 heldout={k: v for k, v in heldout.items() if isinstance(v, float)})
    publish(summary, "train-demo-weights", link=summary.provenance)
    return summary


def heldout_evaluation(root: Path, weights_dir: str | None = None) -> Path:
    """The held-out world (people the demo set never saw) made and preprocessed under `root`, and `evaluate`'s
    cross-reenactment of it against the true parameters, with the demo set of `weights_dir` (None: the bundled
    one); returns the evaluation's folder."""
    world = make_synthetic_dataset(out=str(root / "heldout"), config=HELDOUT_WORLD)
    store = str(root / "heldout.zarr")
    preprocess_dataset(input=world.out, store=store, config=PreprocessConfig(fps=25))
    evaluation = evaluate(config=EvaluateConfig(
        store=store, out=str(root / "heldout-evaluation"), protocols=["cross"], cross_count=12, truth=world.truth,
        fid=False, reenact=ReenactConfig(weights="demo", weights_dir=weights_dir),
        metrics=MetricsConfig(identity="dlib")))
    return Path(evaluation.out)


def heldout_figures(evaluation: Path) -> dict[str, Any]:
    """The held-out errors of an evaluation folder's summary.json: means over frames, per parameter too
    (reenacted, static and the driving frame's own reading, each against the truth), and the networks that
    measured them."""
    cross = EvaluationSummary.read(evaluation).protocols["cross"]
    metrics = cross.metrics
    figures: dict[str, Any] = {name: metrics[metric].mean for name, metric in HELDOUT_FIGURES.items()
                               if metric in metrics}
    figures["per_parameter"] = {name: {kind: metrics[f"{prefix}{metric}"].mean for kind, prefix in
                                       (("reenacted", "truth_"), ("static", "static_truth_"),
                                        ("driving", "driving_truth_"))}
                                for name, metric in PARAMETER_METRICS.items()}
    figures.update(pairs=cross.pairs, frames=cross.frames, faces_found=cross.faces_found.result,
                   net3d=metrics["truth_apd"].network, identity=metrics["csim"].network, evaluation=str(evaluation))
    return figures


def self_reenactment_error(store_path: str | Path, weights_dir: str | None = None,
                           feature_transformer: str | None = None) -> dict[str, float]:
    """Mean absolute pixel error (of 255) of every held-out clip reenacted from its own first frame against its
    real frames: over frames 1.. (`self_pixel_error`) and on frame 0, the source's own reconstruction
    (`feature_transformer`: 'none' for G alone; default the set's)."""
    store = ClipStore.open(store_path, create=False)
    config = ReenactConfig(weights="demo", weights_dir=weights_dir, feature_transformer=feature_transformer)
    networks = networks_for(config)
    later, first = [], []
    for key in store.clips():
        source, driving = prepare_inputs(f"{CLIP_PREFIX}{key}", None, 0, "self", config, networks, store)
        results = generate(source, driving.params, networks, config).astype(np.float32)
        errors = np.abs(results - driving.clip.crops[:].astype(np.float32)).mean(axis=(1, 2, 3))
        first.append(errors[0])
        later.extend(errors[1:])
    return {"self_pixel_error": float(np.mean(later)), "self_pixel_error_frame0": float(np.mean(first))}
