"""`train-encoder`: an e4e encoder trained to invert a frozen generator on a clip store's crops (`training.encoder`).

Runs like train-generator: inside the flow, or in `processes` torchrun processes on this machine.
"""

from __future__ import annotations

from prefect import flow

from flows.summary import publish
from training.common.loop import TrainingSummary, run_stage
from training.encoder import EncoderTrainingConfig
from training.encoder import train_encoder as run_encoder_training


@flow(name="train-encoder", log_prints=True)
def train_encoder(config: EncoderTrainingConfig = EncoderTrainingConfig(), processes: int = 1) -> TrainingSummary:
    """Train an e4e encoder that inverts a generator (registry name or file) on a clip store's crops.

    The encoder of `config.generator` trains on `config.store` to `config.steps`, resuming from the latest
    checkpoint in `config.out`. Checkpoints hold 'e' and 'e_optim' (e4e-voxceleb.pt is read as ['e']) and a
    safetensors the weights registry reads; the final export is `<out>/encoder.safetensors`.
    """
    summary = run_stage("training.encoder", run_encoder_training, config, processes)
    publish(summary, "train-encoder", link=summary.export or summary.weights)
    return summary
