"""`train-joint`: the encoder E and the direction matrix A trained together, G and the Net3D frozen, on pairs of
frames of an encoded store, with the cycle terms (`training.joint`).

Runs like train-directions: inside the flow, or in `processes` torchrun processes on this machine. With
`config.install_dir`, the finished run's E and A are copied into that weights directory as the `demo-joint` set.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.summary import publish
from storage.files import copy_whole
from storage.weights import WEIGHT_FILES
from training.common.loop import TrainingSummary, run_stage
from training.joint import JointTrainingConfig, exports_of
from training.joint import train_joint as run_joint_training


@flow(name="train-joint", log_prints=True)
def train_joint(config: JointTrainingConfig = JointTrainingConfig(), processes: int = 1) -> TrainingSummary:
    """Train E and A of `config` to `config.steps`, resuming from the latest checkpoint in `config.out`. The run
    writes `<out>/joint.safetensors` (E), `<out>/directions.safetensors` (A, with its ranges table),
    `<out>/e4e.pt` and `<out>/A_matrix.pt` (the official layouts); with `install_dir`, E and A become the
    registry's `demo-joint` set there (`--weights demo-joint --weights-dir DIR`)."""
    summary = run_stage("training.joint", run_joint_training, config, processes)
    if config.install_dir and summary.steps == config.steps:
        exports = exports_of(summary.out)
        for path, name in ((exports.encoder, "demo-joint-encoder"), (exports.directions, "demo-joint-directions")):
            copy_whole(Path(path), Path(config.install_dir) / WEIGHT_FILES[name].filename)
        get_run_logger().info("installed the demo-joint set in %s", config.install_dir)
    publish(summary, "train-joint", link=summary.export or summary.weights)
    return summary
