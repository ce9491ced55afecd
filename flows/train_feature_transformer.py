"""`train-feature-transformer`: the Feature Transformer trained with G, the encoder's codes and A frozen, on two
frames of one clip of an encoded store (`training.feature_transformer`).

Runs like train-directions: inside the flow, or in `processes` torchrun processes on this machine.
"""

from __future__ import annotations

from prefect import flow

from flows.summary import publish
from training.common.loop import TrainingSummary, run_stage
from training.feature_transformer import FeatureTransformerTrainingConfig
from training.feature_transformer import train_feature_transformer as run_feature_transformer_training


@flow(name="train-feature-transformer", log_prints=True)
def train_feature_transformer(config: FeatureTransformerTrainingConfig = FeatureTransformerTrainingConfig(),
                              processes: int = 1) -> TrainingSummary:
    """Train the Feature Transformer (G, the codes and A frozen) on two frames of one clip of an encoded store.

    The transformer for `config.generator` and `config.directions` trains to `config.steps`, resuming
    from the latest checkpoint in `config.out`; the final `<out>/feature_transformer.safetensors` is what
    `--feature-transformer` (or the registry's demo-feature-transformer) reads."""
    summary = run_stage("training.feature_transformer", run_feature_transformer_training, config, processes)
    publish(summary, "train-feature-transformer", link=summary.export or summary.weights)
    return summary
