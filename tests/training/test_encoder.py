"""train-encoder: the flow learns to invert a frozen G on a store of G's own renders, the export loads as the
registry's demo encoder, a stopped and resumed run ends bit for bit where an unbroken one does, and the loss
terms (delta regularisation, LPIPS, identity) behave as documented."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from flows.train_encoder import train_encoder as train_encoder_flow
from models import MissingWeightsError
from storage.checkpoints import load_converted
from storage.weights import WeightsRegistry
from tests.training import QUICK, TINY_E, TINY_G, differing_tensors, generator_frames, tiny_generator_file, write_store
from training.common.checkpoints import read_checkpoint
from training.common.distributed import Distributed
from training.data import StoreCrops
from training.encoder import EncoderStage, EncoderTrainingConfig, delta_regularisation, progressive_stage, train_encoder

RENDERS = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A random tiny G as a file, and a store of 2 clips of its renders (so an exact inversion exists)."""
    root = tmp_path_factory.mktemp("encoder")
    generator = tiny_generator_file(root / "g.safetensors")
    write_store(root / "renders.zarr", generator_frames(generator, RENDERS), clips=2)
    return root, generator


def tiny(world, out, **changes) -> EncoderTrainingConfig:
    root, _ = world
    return EncoderTrainingConfig(**{**TINY_E, **QUICK, "store": str(root / "renders.zarr"), "out": str(out),
                                    "generator": str(root / "g.safetensors"), "lr": 1e-3, **changes})


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """40 steps of the train-encoder flow (a few seconds of training)."""
    config = tiny(world, tmp_path_factory.mktemp("run") / "e", steps=40, log_every=5, checkpoint_every=20)
    return config, train_encoder_flow(config=config)


def renders(world) -> torch.Tensor:
    _, generator = world
    return torch.tensor(generator_frames(generator, RENDERS)).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_flow_learns_to_invert_the_generator(world, trained, tmp_path):
    config, summary = trained
    rows = [json.loads(line) for line in open(f"{config.out}/stats.jsonl")]
    assert [row["step"] for row in rows] == list(range(5, 41, 5)) and summary.steps == 40
    assert rows[-1]["l2"] < 0.5 * rows[0]["l2"], [row["l2"] for row in rows]
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["l2"] + config.delta_weight * rows[-1]["delta"], rel=1e-5)

    # the export, through the registry as the demo encoder, in eval mode, beats G's mean face by far
    weights = tmp_path / "weights"
    (weights / "demo").mkdir(parents=True)
    shutil.copy(summary.export, weights / "demo" / "encoder.safetensors")
    encoder = WeightsRegistry(weights).get("demo-encoder")
    _, generator = world
    images = renders(world)
    with torch.no_grad():
        wplus = encoder(images)
        reconstruction, _ = generator([wplus], input_is_latent=True)
        mean_face, _ = generator([generator.mean_latent(4096).repeat(RENDERS, 1)], input_is_latent=True)
    assert wplus.shape == (RENDERS, generator.n_latent, TINY_G["style_dim"])
    error, baseline = (reconstruction - images).pow(2).mean(), (mean_face - images).pow(2).mean()
    assert error < 0.5 * baseline, (error, baseline)


def test_checkpoint_holds_e_and_resume_state_and_reads_as_official(trained, tmp_path):
    config, summary = trained
    checkpoint = read_checkpoint(summary.checkpoint)
    assert {"e", "e_optim", "step", "config", "rng", "networks", "scalers"} <= set(checkpoint)
    assert checkpoint["networks"]["e"] == {"num_layers": 18, "mode": "ir_se", "size": 32, "style_dim": 64,
                                           "channel_max": 16, "input_size": 32}
    converted = load_converted(summary.checkpoint, tmp_path / "e.safetensors", key="e", required_keys=("e",))
    assert differing_tensors({"e": converted.state}, checkpoint, ("e",)) == []  # as e4e-voxceleb.pt['e'] is read


def test_a_stopped_and_resumed_run_ends_with_the_same_weights(world, tmp_path):
    """The break falls inside the progressive schedule (a new delta every 2 steps from step 2)."""
    settings = dict(steps=8, checkpoint_every=4, progressive_start=2, progressive_every=2)
    whole = train_encoder(tiny(world, tmp_path / "whole", **settings))
    train_encoder(tiny(world, tmp_path / "broken", **settings), stop_after=5)  # checkpoints at 4 and 5
    resumed = train_encoder(tiny(world, tmp_path / "broken", **settings))
    assert (resumed.start_step, resumed.steps) == (5, 8)
    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(resumed.checkpoint)
    assert differing_tensors(a, b, ("e",)) == []  # BatchNorm statistics included
    assert a["e_optim"]["state"][0]["exp_avg"].equal(b["e_optim"]["state"][0]["exp_avg"])


def stage_for(config: EncoderTrainingConfig) -> EncoderStage:
    return EncoderStage(config, Distributed(0, 0, 1, torch.device("cpu")), StoreCrops(config.store, config.input_size))


def test_w0_starts_at_the_generators_mean_latent(world, tmp_path):
    _, generator = world
    stage = stage_for(tiny(world, tmp_path / "s", mean_latent_samples=256, seed=3))
    expected = generator.mean_latent(256, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(stage.e.styles[0].linear.bias.detach(), expected)
    stage.e.progressive_stage = 0  # w0 alone: every layer is w0
    wplus = stage.e.eval()(renders(world)[:2])
    assert torch.equal(wplus, wplus[:, :1].expand_as(wplus))


def test_lpips_term_with_a_random_trunk_and_missing_weights(world, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no AlexNet anywhere
    weights = {"weights_dir": str(tmp_path / "weights")}
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        stage_for(tiny(world, tmp_path / "a", lpips_weight=0.8, **weights))
    with pytest.raises(MissingWeightsError, match="model_ir_se50.pth"):  # dlib is not differentiable: ArcFace only
        stage_for(tiny(world, tmp_path / "b", identity_weight=0.1, **weights))
    config = tiny(world, tmp_path / "c", lpips_weight=0.8, lpips_random_backbone=True, **weights)
    losses = stage_for(config).train_step(0, renders(world)[:4])
    assert losses["lpips"] > 0 and torch.isfinite(losses["loss"])
    expected = losses["l2"] + 0.8 * losses["lpips"] + config.delta_weight * losses["delta"]
    assert torch.allclose(losses["loss"], expected)


def test_delta_regularisation_and_the_progressive_schedule():
    wplus = torch.zeros(2, 5, 3)
    wplus[:, 1] = torch.tensor([3.0, 4.0, 0.0])  # |delta_1| = 5
    wplus[:, 4] = torch.tensor([0.0, 0.0, 2.0])  # |delta_4| = 2
    assert delta_regularisation(wplus, 4) == 7 and delta_regularisation(wplus, 3) == 5
    assert delta_regularisation(wplus, 0) == 0
    config = EncoderTrainingConfig(progressive_start=10, progressive_every=5)
    assert [progressive_stage(config, step, 8) for step in (0, 9, 10, 14, 15, 100)] == [0, 0, 1, 1, 2, 7]
    assert progressive_stage(EncoderTrainingConfig(), 0, 8) == 7  # default: every delta from the start


def test_bf16_autocast_runs(world, tmp_path):
    summary = train_encoder(tiny(world, tmp_path / "bf16", steps=2, precision="bf16"))
    assert summary.final_losses["l2"] > 0 and torch.isfinite(torch.tensor(summary.final_losses["loss"]))


def test_with_decoder_lr_g_learns_as_the_decoder_and_is_exported(world, tmp_path):
    """decoder_lr trains G's synthesis network with the encoder (the mapping stays), exports it beside the encoder,
    and a resumed run whose final export is missing writes it from the final checkpoint."""
    _, generator = world
    config = tiny(world, tmp_path / "ae", steps=6, log_every=3, checkpoint_every=6, decoder_lr=1e-3,
                  export_dtype="fp32")
    summary = train_encoder_flow(config=config)
    (tmp_path / "weights" / "demo").mkdir(parents=True)
    shutil.copy(tmp_path / "ae" / "generator.safetensors", tmp_path / "weights" / "demo" / "generator.safetensors")
    decoder = WeightsRegistry(tmp_path / "weights").get("demo-generator")
    before, after = generator.state_dict(), decoder.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name].to(before[name].dtype))}
    assert changed and all(not name.startswith("style.") for name in changed)
    assert {"e", "g", "e_optim", "g_optim"} <= set(read_checkpoint(summary.checkpoint))

    (tmp_path / "ae" / "encoder.safetensors").unlink()  # as if killed between the last checkpoint and the export
    again = train_encoder(config)
    assert again.start_step == again.steps == 6 and (tmp_path / "ae" / "encoder.safetensors").is_file()
