"""`train-generator`: StyleGAN2 trained from scratch or fine-tuned on a clip store's crops (`training.generator`).

The loop runs inside the flow (one process: CPU or one GPU), or in `processes` torchrun processes on this machine
(one per GPU; gloo on CPUs), whose rank 0 writes the summary the flow returns. Multi-node runs start torchrun on
every node with `python -m training.generator` directly (see `training.common.distributed`).
"""

from __future__ import annotations

from prefect import flow

from flows.summary import publish
from training.common.loop import TrainingSummary, run_stage
from training.generator import GeneratorTrainingConfig
from training.generator import train_generator as run_generator_training


@flow(name="train-generator", log_prints=True)
def train_generator(config: GeneratorTrainingConfig = GeneratorTrainingConfig(), processes: int = 1) -> TrainingSummary:
    """Train or fine-tune the StyleGAN2 generator on a clip store's crops (resumes from the latest checkpoint).

    G (and D) train on `config.store` to `config.steps`, resuming from the latest checkpoint in `config.out`.

    Checkpoints hold rosinality's layout ('g', 'd', 'g_ema', 'g_optim', 'd_optim') and a safetensors of G's moving
    average that the weights registry reads; the final export is `<out>/generator.safetensors`.
    """
    summary = run_stage("training.generator", run_generator_training, config, processes)
    publish(summary, "train-generator", link=summary.export or summary.weights)
    return summary
