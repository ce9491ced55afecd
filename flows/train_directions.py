"""`train-directions`: the direction matrix A trained with G and the Net3D frozen, in the paper's three phases
(`training.directions`).

Runs like train-generator: inside the flow, or in `processes` torchrun processes on this machine.
"""

from __future__ import annotations

from prefect import flow

from flows.summary import publish
from training.common.loop import TrainingSummary, run_stage
from training.directions import DirectionsTrainingConfig
from training.directions import train_directions as run_directions_training


@flow(name="train-directions", log_prints=True)
def train_directions(config: DirectionsTrainingConfig = DirectionsTrainingConfig(),
                     processes: int = 1) -> TrainingSummary:
    """Train the direction matrix A (G and the Net3D frozen) in the paper's synthetic, real and paired phases.

    A for `config.generator` trains to `config.steps` (synthetic, then real, then paired steps), resuming from the
    latest checkpoint in `config.out`. Checkpoints hold the official A_matrix.pt entries plus 'A_optim' and the
    ranges table; their safetensors (and the final `<out>/directions.safetensors`) carry `shift_scale` and `ranges`
    in their entries, as the weights registry's `demo-directions` is read.
    """
    summary = run_stage("training.directions", run_directions_training, config, processes)
    publish(summary, "train-directions", link=summary.export or summary.weights)
    return summary

