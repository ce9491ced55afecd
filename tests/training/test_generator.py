"""train-generator: the flow learns an easy dataset, checkpoints in rosinality's layout load through the registry,
a stopped and resumed run ends bit for bit where an unbroken one does, fine-tuning starts from a file, and the
loss pieces (R1, path length, ADA) compute what they claim."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.train_generator import train_generator as train_generator_flow
from models.stylegan2 import Discriminator, Generator
from storage.checkpoints import load_converted, load_safetensors, read_safetensors_metadata
from storage.weights import WEIGHT_FILES, WeightsRegistry
from tests.training import QUICK, TINY_G, differing_tensors, flat_colour_frames, write_store
from training.common.checkpoints import RunDir, list_checkpoints, read_checkpoint
from training.common.distributed import Distributed
from training.data import StoreCrops
from training.generator import (
    AdaptiveP,
    GeneratorStage,
    GeneratorTrainingConfig,
    augment_images,
    ema_decay,
    path_lengths,
    r1_penalty,
    train_generator,
)

COLOUR = (200, 60, 30)
OFFICIAL_KEYS = {"g", "d", "g_ema", "g_optim", "d_optim"}  # rosinality's train.py


@pytest.fixture(scope="module")
def flat_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("generator") / "flat.zarr"
    write_store(root, flat_colour_frames(16, 64, COLOUR), clips=2)
    return root


def tiny(store, out, **changes) -> GeneratorTrainingConfig:
    return GeneratorTrainingConfig(**{**TINY_G, **QUICK, "store": str(store), "out": str(out), **changes})


@pytest.fixture(scope="module")
def trained(flat_store, tmp_path_factory):
    """40 steps of the train-generator flow on the flat-colour store (about 10-20 s)."""
    config = tiny(flat_store, tmp_path_factory.mktemp("run") / "g", steps=40, log_every=5, checkpoint_every=10,
                  keep_checkpoints=2, ema_kimg=0.02)
    return config, train_generator_flow(config=config)


def test_flow_trains_d_to_tell_real_from_fake_and_g_towards_the_data(trained, tmp_path):
    config, summary = trained
    assert (summary.stage, summary.start_step, summary.steps, summary.world_size) == ("generator", 0, 40, 1)
    rows = [json.loads(line) for line in open(f"{config.out}/stats.jsonl")]
    assert [row["step"] for row in rows] == list(range(5, 41, 5))
    first, later = rows[0]["d"], np.mean([row["d"] for row in rows[4:]])
    assert first > 0.7 and later < first - 0.2, (first, later)  # D loss starts near 2 ln 2 = 1.39 and falls

    # G's moving average now paints the data's colour: its mean is far nearer than a grey (mean 0) image
    weights = tmp_path / "weights"
    (weights / "demo").mkdir(parents=True)
    shutil.copy(summary.export, weights / "demo" / "generator.safetensors")
    generator = WeightsRegistry(weights).get("demo-generator")
    with torch.no_grad():
        images, _ = generator([torch.randn(32, TINY_G["style_dim"], generator=torch.Generator().manual_seed(0))])
    mean, goal = images.mean(dim=(0, 2, 3)), torch.tensor(COLOUR) / 127.5 - 1
    assert torch.equal(torch.sign(mean), torch.sign(goal)), mean
    assert (mean - goal).abs().mean() < 0.75 * goal.abs().mean(), (mean, goal)


def test_checkpoints_are_rosinalitys_layout_and_load_through_the_registry(trained, tmp_path, monkeypatch):
    config, summary = trained
    assert [path.name for path in list_checkpoints(RunDir(Path(config.out)))] == \
        ["step-0000030.pt", "step-0000040.pt"]  # keep_checkpoints=2
    checkpoint = read_checkpoint(summary.checkpoint)  # the weights-only unpickler: tensors and plain data only
    assert OFFICIAL_KEYS <= set(checkpoint) and checkpoint["step"] == 40
    assert checkpoint["networks"]["g_ema"] == config.generator_config()
    assert len(checkpoint["rng"]) == 1 and checkpoint["config"]["steps"] == 40

    # the registry's official entries read it as they read stylegan-voxceleb.pt: ['g_ema'] and ['d']
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(summary.checkpoint, weights / "stylegan-voxceleb.pt")
    for name, config_of in (("stylegan2-voxceleb256", config.generator_config),
                            ("stylegan2-voxceleb256-discriminator", config.discriminator_config)):
        monkeypatch.setitem(WEIGHT_FILES, name, dataclasses.replace(WEIGHT_FILES[name], config=config_of()))
    registry = WeightsRegistry(weights)
    generator = registry.get("stylegan2-voxceleb256")
    discriminator = registry.get("stylegan2-voxceleb256-discriminator")
    assert not differing_tensors({"g_ema": generator.state_dict()}, checkpoint, ("g_ema",))
    assert not differing_tensors({"d": discriminator.state_dict()}, checkpoint, ("d",))
    converted = load_converted(summary.checkpoint, tmp_path / "cache.safetensors", key="g_ema",
                               required_keys=tuple(sorted(OFFICIAL_KEYS)))
    assert not differing_tensors({"g_ema": converted.state}, checkpoint, ("g_ema",))

    # the step's safetensors: G's average in fp32 with its constructor; the export: the same in fp16
    metadata = read_safetensors_metadata(summary.weights)
    assert metadata["config"] == config.generator_config() and metadata["step"] == 40
    assert metadata["builder"] == "models.stylegan2:Generator" and metadata["state_key"] == "g_ema"
    step_state, _ = load_safetensors(summary.weights)
    export_state, export_metadata = load_safetensors(summary.export)
    assert not differing_tensors({"g_ema": step_state}, checkpoint, ("g_ema",))
    assert all(value.dtype == torch.float16 for value in export_state.values())
    assert export_metadata["training"]["steps"] == 40 and set(export_metadata["losses"]) >= {"d", "g"}


def test_a_stopped_and_resumed_run_ends_with_the_same_weights(flat_store, tmp_path):
    """Every random stream crosses the break: ADA's p moves, R1 and path length run before and after step 4."""
    settings = dict(steps=8, checkpoint_every=4, d_reg_every=3, g_reg_every=2, augment="ada", augment_p=0.2,
                    ada_every=2, ada_kimg=0.05, mixing=0.5)
    whole = train_generator(tiny(flat_store, tmp_path / "whole", **settings))
    first = train_generator(tiny(flat_store, tmp_path / "broken", **settings), stop_after=4)
    assert first.steps == 4 and not first.export  # stopped: no final export yet
    with open(tmp_path / "broken" / "stats.jsonl", "a") as stats:  # as if killed after logging step 6
        stats.write(json.dumps({"step": 6, "d": -1.0}) + "\n")
    resumed = train_generator(tiny(flat_store, tmp_path / "broken", **settings))
    assert (resumed.start_step, resumed.steps) == (4, 8)
    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(resumed.checkpoint)
    assert differing_tensors(a, b, ("g", "d", "g_ema")) == []
    assert a["ada_aug_p"] == b["ada_aug_p"] != 0.2 and torch.equal(a["mean_path_length"], b["mean_path_length"])
    assert a["g_optim"]["state"][0]["exp_avg"].equal(b["g_optim"]["state"][0]["exp_avg"])
    rows = {d: [json.loads(line) for line in open(tmp_path / d / "stats.jsonl")] for d in ("whole", "broken")}
    strip = lambda row: {k: v for k, v in row.items() if k not in ("time", "steps_per_s", "images_per_s")}
    # the same losses, step by step (the killed run's row past its checkpoint is gone)
    assert [strip(r) for r in rows["whole"]] == [strip(r) for r in rows["broken"]]


def stage_for(config: GeneratorTrainingConfig) -> GeneratorStage:
    group = Distributed(0, 0, 1, torch.device("cpu"))
    return GeneratorStage(config, group, StoreCrops(config.store, config.size))


def test_fine_tuning_starts_from_the_files_networks(trained, flat_store, tmp_path):
    _, summary = trained
    checkpoint = read_checkpoint(summary.checkpoint)
    stage = stage_for(tiny(flat_store, tmp_path / "ft", init=summary.checkpoint))
    assert differing_tensors({key: net.state_dict() for key, net in stage.networks().items()}, checkpoint,
                             ("g", "d", "g_ema")) == []
    from_export = stage_for(tiny(flat_store, tmp_path / "ft2", init=summary.export))  # G's average only
    exported = {"g_ema": {name: value.half().float() for name, value in checkpoint["g_ema"].items()}}  # the fp16 copy
    for net in (from_export.g, from_export.g_ema):
        assert differing_tensors({"g_ema": net.state_dict()}, exported, ("g_ema",)) == []
    with pytest.raises(ValueError, match="does not fit the configured network"):
        stage_for(tiny(flat_store, tmp_path / "ft3", init=summary.checkpoint, channel_max=16))


def test_r1_is_the_squared_gradient_norm_at_the_reals():
    """D(x) = sum w x^2: its gradient is 2 w x, and the penalty trains w (the graph is kept)."""
    weight = torch.randn(3, 8, 8, requires_grad=True)
    real = torch.randn(4, 3, 8, 8, requires_grad=True)
    penalty = r1_penalty((real.pow(2) * weight).sum(dim=(1, 2, 3)), real)
    expected = (2 * weight * real).pow(2).flatten(1).sum(1).mean()
    assert torch.allclose(penalty, expected)
    penalty.backward()
    assert torch.allclose(weight.grad, (8 * weight * real.pow(2)).mean(0), rtol=1e-4)


def test_path_length_of_a_linear_generator():
    """images = sum_l latents_l A_l: the path length is sqrt(mean_l |A_l y|^2) for the direction y drawn."""
    maps = torch.randn(5, 16, 3 * 4 * 4)
    latents = torch.randn(2, 5, 16, requires_grad=True)
    images = torch.einsum("bld,ldp->bp", latents, maps).view(2, 3, 4, 4)
    torch.manual_seed(7)
    lengths = path_lengths(images, latents)
    torch.manual_seed(7)
    direction = torch.randn_like(images).view(2, -1) / 4
    expected = torch.einsum("ldp,bp->bld", maps, direction).pow(2).sum(2).mean(1).sqrt()
    assert torch.allclose(lengths, expected, rtol=1e-5)


def test_augmentation_is_off_at_p0_and_differentiable_otherwise():
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    state = torch.get_rng_state()
    assert augment_images(images, 0.0) is images and torch.equal(torch.get_rng_state(), state)  # draws nothing
    source = images.clone().requires_grad_(True)
    augmented = augment_images(source, 0.9)
    assert augmented.shape == images.shape and (augmented - images).abs().mean() > 0.05
    augmented.pow(2).sum().backward()
    assert source.grad.abs().sum() > 0


def test_ada_p_rises_while_d_overfits_and_falls_when_it_does_not():
    config = GeneratorTrainingConfig(augment="ada", augment_p=0.1, ada_every=2, ada_kimg=0.1, ada_target=0.6)
    group = Distributed(0, 0, 1, torch.device("cpu"))
    ada = AdaptiveP(config, images_per_step=4)  # each update moves p by 4 * 2 / 100 = 0.08
    for step in range(4):
        ada.observe(torch.full((4, 1), 3.0), step, group)  # every real scored real: r_t = 1 > 0.6
    assert ada.r_t == 1.0 and ada.p == pytest.approx(0.1 + 2 * 0.08)
    for step in range(4, 12):
        ada.observe(torch.tensor([[1.0], [-1.0], [-1.0], [-1.0]]), step, group)  # r_t = -0.5
    assert ada.r_t == -0.5 and ada.p == 0.0  # floored at 0


def test_ema_half_life_is_ema_kimg_thousand_images():
    config = GeneratorTrainingConfig(ema_kimg=10.0)
    assert ema_decay(config, 32, 0) ** (10_000 / 32) == pytest.approx(0.5)
    ramped = GeneratorTrainingConfig(ema_kimg=10.0, ema_rampup=0.05)
    assert ema_decay(ramped, 32, 3200) ** (160 / 32) == pytest.approx(0.5)  # half-life 5 % of 3200 images


def test_channel_max_narrows_the_networks_and_leaves_defaults_alone():
    with torch.device("meta"):
        narrow, full = Generator(256, 512, 8, 1, channel_max=128), Generator(256, 512, 8, 1)
        assert max(narrow.channels.values()) == 128 and full.channels[4] == 512 and full.channels[256] == 64
        assert sum(p.numel() for p in narrow.parameters()) < 0.25 * sum(p.numel() for p in full.parameters())
        assert Discriminator(64, 1, channel_max=32).final_linear[1].weight.shape == (1, 32)


def test_fp16_autocast_with_gradient_scalers_runs_and_checkpoints_their_state(flat_store, tmp_path):
    summary = train_generator(tiny(flat_store, tmp_path / "amp", steps=3, precision="fp16", d_reg_every=2,
                                   g_reg_every=2))
    assert all(math.isfinite(value) for value in summary.final_losses.values())
    scalers = read_checkpoint(summary.checkpoint)["scalers"]
    assert set(scalers) == {"g", "d"} and scalers["g"]["scale"] > 0  # resumed with the same loss scale
