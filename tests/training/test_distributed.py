"""DistributedDataParallel on CPUs: 2 torchrun processes (gloo) train in step, and resume across a break."""

from __future__ import annotations

import pytest

from tests.training import (
    QUICK,
    TINY_E,
    TINY_G,
    differing_tensors,
    flat_colour_frames,
    tiny_generator_file,
    write_store,
)
from training.common.checkpoints import read_checkpoint
from training.common.loop import run_stage
from training.encoder import EncoderTrainingConfig, train_encoder
from training.generator import GeneratorTrainingConfig, train_generator

pytestmark = pytest.mark.slow  # each torchrun start costs ~10 s on 2 cores


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_store(root / "s.zarr", flat_colour_frames(16, 32), clips=2)
    return root


def test_two_processes_train_the_generator_in_step_and_resume_to_the_same_weights(store):
    def config(out: str, steps: int) -> GeneratorTrainingConfig:
        return GeneratorTrainingConfig(**{**TINY_G, **QUICK, "store": str(store / "s.zarr"), "out": str(store / out),
                                          "steps": steps, "batch_size": 2, "checkpoint_every": 3, "d_reg_every": 2,
                                          "g_reg_every": 2, "augment": "ada", "augment_p": 0.1, "ada_every": 2,
                                          "ada_kimg": 0.05})

    whole = run_stage("training.generator", train_generator, config("whole", 6), processes=2)
    assert (whole.world_size, whole.steps, whole.replicas_in_sync) == (2, 6, True)
    checkpoint = read_checkpoint(whole.checkpoint)
    assert len(checkpoint["rng"]) == 2 and not checkpoint["rng"][0]["torch"].equal(checkpoint["rng"][1]["torch"])
    run_stage("training.generator", train_generator, config("broken", 3), processes=2)
    resumed = run_stage("training.generator", train_generator, config("broken", 6), processes=2)
    assert (resumed.start_step, resumed.replicas_in_sync) == (3, True)
    assert differing_tensors(checkpoint, read_checkpoint(resumed.checkpoint), ("g", "d", "g_ema")) == []


def test_two_processes_train_the_encoder_in_step(store):
    tiny_generator_file(store / "g.safetensors")
    config = EncoderTrainingConfig(**{**TINY_E, **QUICK, "store": str(store / "s.zarr"), "out": str(store / "enc"),
                                      "generator": str(store / "g.safetensors"), "steps": 4, "batch_size": 2,
                                      "progressive_start": 1, "progressive_every": 1})  # unused blocks at first
    summary = run_stage("training.encoder", train_encoder, config, processes=2)
    assert (summary.world_size, summary.replicas_in_sync, summary.steps) == (2, True, 4)
    assert summary.images_per_second > 0 and summary.export.endswith("encoder.safetensors")
