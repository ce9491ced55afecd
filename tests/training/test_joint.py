"""train-joint: `reenact train-joint` lowers its losses on a tiny world, resumes bit for bit, writes E and A in the
official layouts and as safetensors that the registry's demo-joint set loads; the cycle terms are zero for an exact
encoder and A = 0; cross-identity pairs have no pixel target; joint=false keeps the networks' gradients apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from flows.cli import app
from models.directions import DirectionMatrix, from_checkpoint
from models.e4e import Encoder4Editing
from storage.checkpoints import load_converted
from storage.weights import WeightsRegistry, reenaction_set
from tests.training import QUICK, TINY_E, TINY_G, assert_resume_is_bitwise, tiny_generator_file, write_world
from training.common.checkpoints import Export, read_checkpoint, save_export
from training.common.distributed import Distributed
from training.data import StoreCrops
from training.joint import JointStage, JointTrainingConfig, cycle_terms, exports_of, train_joint


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny G, E and A as files, and a store of G's renders of two identities with face3d readings."""
    root = tmp_path_factory.mktemp("joint")
    generator = tiny_generator_file(root / "g.safetensors")
    store = write_world(root, generator, clips=2)
    torch.manual_seed(1)
    arguments = {**TINY_E, "size": TINY_G["size"], "style_dim": TINY_G["style_dim"]}
    save_export(Export(Encoder4Editing(**arguments), "models.e4e:Encoder4Editing", arguments, "e"),
                root / "e.safetensors", torch.float32, {})
    table = np.load(store.root / "ranges-synth-regressor.npy")
    entries = {"shift_scale": 6.0, "ranges": [[None if np.isnan(v) else v for v in row] for row in table.tolist()]}
    save_export(Export(DirectionMatrix(shift_dim=TINY_G["style_dim"], num_layers=4),
                       "models.directions:DirectionMatrix", {"shift_dim": TINY_G["style_dim"], "num_layers": 4},
                       "A_matrix", entries), root / "a.safetensors", torch.float32, {})
    return root, generator


def settings(world, out, **changes) -> dict:
    root, _ = world
    return {**QUICK, "store": str(root / "world.zarr"), "out": str(out), "generator": str(root / "g.safetensors"),
            "encoder": str(root / "e.safetensors"), "directions": str(root / "a.safetensors"), "truncation": 1.0,
            "mean_latent_samples": 64, "validation_count": 4, "encoder_lr": 1e-3, "directions_lr": 1e-3,
            "steps": 6, **changes}


def tiny(world, out, **changes) -> JointTrainingConfig:
    return JointTrainingConfig(**settings(world, out, **changes))


def stage_for(config: JointTrainingConfig) -> JointStage:
    torch.manual_seed(config.seed)
    return JointStage(config, Distributed(0, 0, 1, torch.device("cpu")), StoreCrops(config.store, 32))


def test_the_command_lowers_the_losses_and_exports_e_and_a_in_both_layouts(world, tmp_path):
    config = settings(world, tmp_path / "run", steps=30, log_every=5, checkpoint_every=30)
    result = CliRunner().invoke(app, ["train-joint", *(f"{key}={value}" for key, value in config.items())])
    assert result.exit_code == 0, result.output
    assert "joint: steps 0->30 on 1 process(es)" in result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])
    for term in ("inversion_l2", "pixel", "cycle_pixel", "shape"):  # batches of 4 are noisy: the last two windows
        assert (rows[-2][term] + rows[-1][term]) / 2 < rows[0][term], (term, [row[term] for row in rows])
    assert {"shape", "mouth", "eye", "cycle_code", "delta"} <= set(rows[-1])
    assert "lpips" not in rows[-1] and "identity" not in rows[-1]  # no AlexNet, no ArcFace here: off, said once

    exports, checkpoint = exports_of(tmp_path / "run"), read_checkpoint(tmp_path / "run/checkpoints/step-0000030.pt")
    official_e = load_converted(exports.official_encoder, tmp_path / "e.cache.safetensors", key="e",
                                required_keys=("e",))
    assert all(torch.equal(official_e.state[name], value) for name, value in checkpoint["e"].items())
    official_a, shift_scale = from_checkpoint(torch.load(exports.official_directions, weights_only=True))
    assert torch.equal(official_a.linear.weight, checkpoint["A_matrix"]["linear.weight"]) and shift_scale == 6.0
    checkpoint_a, _ = from_checkpoint(checkpoint)  # the checkpoint itself reads as A_matrix.pt and as e4e's ['e']
    assert torch.equal(checkpoint_a.linear.bias, official_a.linear.bias)

    registry = WeightsRegistry(tmp_path / "weights")
    encoder, _ = registry.load_spec(str(exports.encoder))
    directions, entries = registry.load_spec(str(exports.directions))
    assert isinstance(encoder, Encoder4Editing) and isinstance(directions, DirectionMatrix)
    assert entries["face3d"] == "synth-regressor" and len(entries["ranges"]) == len(checkpoint["ranges"])
    weight = checkpoint["A_matrix"]["linear.weight"]
    assert torch.allclose(directions.linear.weight, weight, atol=1e-3 * float(weight.abs().max()))  # fp16 export


def test_installed_exports_are_the_demo_joint_set(world, tmp_path):
    """install_dir puts E and A where the registry's demo-joint set reads them (G and the Feature Transformer stay
    the bundled demo ones); a run for another G cannot be installed as that set."""
    from flows.train_joint import train_joint as train_flow

    weights = tmp_path / "weights"
    with pytest.raises(ValueError, match="demo-joint"):
        tiny(world, tmp_path / "tiny", install_dir=str(weights))  # the tiny G is not demo-generator
    registry = WeightsRegistry(weights)
    assert [row["present"] for row in registry.status("demo-joint")] == [True, False, False, True]
    summary = train_flow(config=tiny(world, tmp_path / "run", generator="demo-generator", encoder="demo-encoder",
                                     directions="demo-directions", steps=2, install_dir=str(weights)))
    assert all(row["present"] for row in registry.status("demo-joint"))
    exports = exports_of(summary.out)
    installed = registry.get(reenaction_set("demo-joint").encoder).state_dict()
    exported = registry.load_spec(str(exports.encoder))[0].state_dict()
    assert all(torch.equal(value, exported[name]) for name, value in installed.items())
    assert isinstance(registry.get(reenaction_set("demo-joint").directions), DirectionMatrix)


def test_a_stopped_and_resumed_run_ends_with_the_same_e_and_a(world, tmp_path):
    assert_resume_is_bitwise(train_joint, lambda name: tiny(world, tmp_path / name, checkpoint_every=3), 3,
                             ("e", "A_matrix"), ("e_optim", "A_optim"))


@torch.no_grad()
def test_the_cycle_is_zero_for_an_exact_encoder_and_a_zero_a():
    """A hand-built case: the codes of G's own renders, an E that looks each image up and returns the code that
    rendered it, A = 0. The reenacted code is the source's, G renders the source again, E returns its code and
    driving back by A(p_s - p_t) = 0 leaves it: every cycle term is exactly zero. A's bias alone breaks it."""
    torch.manual_seed(0)
    from models.stylegan2 import Generator

    generator = Generator(**TINY_G).eval()
    codes = torch.randn(3, generator.n_latent, TINY_G["style_dim"])

    def render(wplus):
        return generator.synthesis(wplus).image

    sources = render(codes)

    def exact_encoder(images):  # the stored code of the nearest stored render
        distances = ((images[:, None] - sources[None]) ** 2).flatten(2).sum(2)
        return codes[distances.argmin(1)]

    directions = DirectionMatrix(shift_dim=TINY_G["style_dim"], num_layers=4)
    directions.linear.weight.zero_(), directions.linear.bias.zero_()
    delta = torch.randn(3, 15) * 3
    reenacted_code = codes + 0  # E(s) + A(Δp) with A = 0
    terms = cycle_terms(exact_encoder, render, reenacted_code, render(reenacted_code), directions(-delta), sources,
                        perceptual=lambda a, b: (a - b).abs().flatten(1).mean(1))
    assert set(terms) == {"cycle_code", "cycle_pixel", "cycle_lpips"}
    assert all(float(value) == 0.0 for value in terms.values()), terms

    directions.linear.bias.fill_(0.5)  # a constant shift: driving there and back is no longer the identity
    shifted = torch.cat([codes[:, :4] + 0.5, codes[:, 4:]], 1)
    broken = cycle_terms(exact_encoder, render, shifted, render(shifted), directions(-delta), sources)
    assert float(broken["cycle_pixel"]) > 0 and float(broken["cycle_code"]) > 0


def test_cross_identity_pairs_have_no_pixel_target_and_every_term_can_be_switched_off(world, tmp_path):
    config = tiny(world, tmp_path / "s", batch_size=8, cross_fraction=0.5)
    stage = stage_for(config)
    assert stage.perceptual is None and stage.identity is None  # their files are absent: the terms are off
    assert stage.weights["lpips"] == stage.weights["cycle_lpips"] == stage.weights["identity"] == 0
    pairs = stage._pairs(8, cross=4)
    assert pairs.same.tolist() == [True] * 4 + [False] * 4
    items = stage.frames.draw(6)
    identity = lambda item: stage.frames.dataset.keys[stage.frames.dataset.items[item, 0]].identity  # noqa: E731
    assert all(identity(a) != identity(b) for a, b in zip(items, stage._other_identity(items)))
    assert all(identity(a) == identity(b) for a, b in zip(items, stage.frames.partners(items)))
    _, terms = stage.losses(pairs, stage.e, stage.A)
    assert set(terms) == {"delta", "inversion_l2", "pixel", "shape", "mouth", "eye", "cycle_code", "cycle_pixel"}
    off = stage_for(tiny(world, tmp_path / "o", cycle_code_weight=0, cycle_pixel_weight=0, inversion_l2_weight=0))
    _, fewer = off.losses(pairs, off.e, off.A)
    assert set(fewer) == {"delta", "pixel", "shape", "mouth", "eye"}


def test_joint_false_keeps_the_gradients_of_e_and_a_apart(world, tmp_path):
    """Separate training: the reenactment terms reach A only, the inversion terms E only; joint: both reach E."""
    grads = {}
    for joint in (True, False):
        stage = stage_for(tiny(world, tmp_path / str(joint), joint=joint))
        pairs = stage._pairs(4, cross=0)
        _, terms = stage.losses(pairs, stage.e, stage.A)
        for name in ("pixel", "inversion_l2", "cycle_pixel", "cycle_code"):
            stage.e.zero_grad(), stage.A.zero_grad()
            terms[name].backward(retain_graph=True)
            reached_e = any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.e.parameters())
            reached_a = stage.A.linear.weight.grad is not None and stage.A.linear.weight.grad.abs().sum() > 0
            grads[joint, name] = (reached_e, bool(reached_a))
    assert grads[True, "pixel"] == (True, True) and grads[False, "pixel"] == (False, True)
    assert grads[True, "inversion_l2"] == grads[False, "inversion_l2"] == (True, False)
    assert grads[True, "cycle_pixel"] == (True, True) and grads[False, "cycle_pixel"] == (False, True)
    assert grads[False, "cycle_code"] == (True, False)


def test_the_cycle_encodes_the_reenacted_faces_with_the_running_statistics(world, tmp_path):
    """E reads G's reenacted faces as inference does (eval-mode statistics), with gradients, and they do not move
    the statistics E normalises real crops with; E stays in training mode."""
    stage = stage_for(tiny(world, tmp_path / "b"))
    before = {name: value.clone() for name, value in stage.e.state_dict().items() if "running" in name}
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = stage.encode_generated(images)
    codes.sum().backward()
    assert stage.e.training
    assert all(torch.equal(value, stage.e.state_dict()[name]) for name, value in before.items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.e.parameters())
    stage.e.eval()
    assert torch.equal(codes.detach(), stage.e(images.detach()))
