"""train-directions: the flow moves the Net3D's reading of reenacted faces towards the target (on fixed validation
pairs), half of each batch moves one direction, the phases follow the schedule, a stopped and resumed run ends with
bit for bit the same A, and the export loads as the registry's demo directions and drives a Reenactor. With DECA and
FLAME (random weights in the official layout) as the Net3D, the shape term is FLAME's vertex L1, every phase runs,
and gradients reach A only."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from flows.train_directions import train_directions as train_directions_flow
from models import MissingWeightsError
from models.directions import NUM_PARAMS, ParamRanges, from_checkpoint
from models.flame import euler_from_axis_angle, orthographic_projection
from models.reenact import Reenactor
from storage.weights import WeightsRegistry
from tests.training import QUICK, TINY_G, differing_tensors, tiny_generator_file, write_world
from tests.weights import write_deca_flame_weights
from training.common.checkpoints import read_checkpoint
from training.common.distributed import Distributed
from training.data import StoreCrops
from training.directions import (
    DirectionsStage,
    DirectionsTrainingConfig,
    Faces,
    build_net3d,
    load_deca_net3d,
    one_direction_shift,
    split_reading,
    train_directions,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("directions")
    generator = tiny_generator_file(root / "g.safetensors")
    write_world(root, generator)
    return root, generator


def tiny(world, out, **changes) -> DirectionsTrainingConfig:
    root, _ = world
    settings = {**QUICK, "store": str(root / "world.zarr"), "out": str(out), "generator": str(root / "g.safetensors"),
                "lr": 3e-3, "mean_latent_samples": 256, "validation_count": 16, "steps": 6, "synthetic_steps": 6,
                "real_steps": 0, "paired_steps": 0}
    return DirectionsTrainingConfig(**{**settings, **changes})


def stage_for(config: DirectionsTrainingConfig) -> DirectionsStage:
    torch.manual_seed(config.seed)
    return DirectionsStage(config, Distributed(0, 0, 1, torch.device("cpu")), StoreCrops(config.store, 32))


@pytest.mark.slow
def test_flow_moves_the_reenacted_parameters_towards_the_target(world, tmp_path):
    """100 synthetic steps of batch 8 (about 35 s on 2 cores). The tiny random G draws no faces, so the regressor's
    readings of its images respond to W+ only weakly and nonlinearly: the margin is modest (measured 3.09 -> 2.66),
    and the result is deterministic for the seed."""
    config = tiny(world, tmp_path / "a", steps=100, synthetic_steps=100, batch_size=8, lr=1e-3, truncation=1.0,
                  log_every=10, checkpoint_every=50)
    summary = train_directions_flow(config=config)
    rows = [json.loads(line) for line in open(f"{config.out}/stats.jsonl")]
    assert [row["step"] for row in rows] == list(range(10, 101, 10)) and summary.steps == 100
    stage = stage_for(config)
    before = stage.validation_error()  # A at its N(0, 0.03) start
    with torch.no_grad():
        stage.A.linear.weight.zero_(), stage.A.linear.bias.zero_()
    standing_still = stage.validation_error()  # Δp has no effect: the error of doing nothing
    stage.A.load_state_dict(read_checkpoint(summary.checkpoint)["A_matrix"])
    after = stage.validation_error()
    print(f"validation parameter L1 (shift units): start {before:.3f}, A = 0 {standing_still:.3f}, "
          f"trained {after:.3f}; train shape term {rows[0]['shape']:.3f} -> {rows[-1]['shape']:.3f}")
    assert after < 0.92 * before and after < 0.95 * standing_still, (before, standing_still, after)
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["shape"] + rows[-1]["mouth"] + rows[-1]["eye"], rel=1e-5)
    assert "identity" not in rows[-1]  # no ArcFace here: weight 0, said once


def test_half_of_each_batch_moves_one_direction():
    source = torch.randn(6, NUM_PARAMS) * 3
    torch.manual_seed(0)
    delta, truth = one_direction_shift(source, 6, 6.0)
    assert ((delta != 0).sum(1) == 1).all()
    moved = delta != 0
    assert torch.equal(truth[~moved], source[~moved]) and (truth[moved].abs() <= 6).all()
    assert torch.allclose(truth, source + delta)


def test_stage_batches_one_hot_half_and_the_phase_schedule(world, tmp_path):
    config = tiny(world, tmp_path / "s", batch_size=8, steps=7, synthetic_steps=2, real_steps=2, paired_steps=2,
                  log_every=1)
    assert [config.phase_at(step) for step in range(7)] == ["synthetic"] * 2 + ["real"] * 2 + ["paired"] * 3
    stage = stage_for(config)
    for phase in ("synthetic", "real"):
        pairs = stage._pairs(phase)
        assert ((pairs.delta[4:] != 0).sum(1) == 1).all()  # the second half: one direction each
        assert ((pairs.delta[:4] != 0).sum(1) > 1).all()  # the first half: the whole target
    paired = stage._pairs("paired")
    assert paired.target_image is not None and paired.target_image.shape == (8, 3, 32, 32)
    summary = train_directions(config)
    rows = [json.loads(line) for line in open(f"{config.out}/stats.jsonl")]
    assert [row["phase"] for row in rows] == [0, 0, 1, 1, 2, 2, 2] and summary.steps == 7
    assert all(row["pixel"] == 0 for row in rows[:4]) and all(row["pixel"] > 0 for row in rows[4:])


def test_a_stopped_and_resumed_run_ends_with_the_same_A(world, tmp_path):
    """The break falls inside the real phase; every phase runs on both sides of it."""
    settings = dict(steps=6, synthetic_steps=2, real_steps=2, paired_steps=2, checkpoint_every=3)
    whole = train_directions(tiny(world, tmp_path / "whole", **settings))
    train_directions(tiny(world, tmp_path / "broken", **settings), stop_after=3)
    resumed = train_directions(tiny(world, tmp_path / "broken", **settings))
    assert (resumed.start_step, resumed.steps) == (3, 6)
    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(resumed.checkpoint)
    assert differing_tensors(a, b, ("A_matrix",)) == []
    assert a["A_optim"]["state"][0]["exp_avg"].equal(b["A_optim"]["state"][0]["exp_avg"])


def test_checkpoint_and_export_load_as_official_and_registry_directions(world, tmp_path):
    config = tiny(world, tmp_path / "e", steps=4, synthetic_steps=4)
    summary = train_directions_flow(config=config)
    _, generator = world
    checkpoint = read_checkpoint(summary.checkpoint)
    matrix, shift_scale = from_checkpoint(checkpoint)  # the official A_matrix.pt layout
    assert (matrix.shift_dim, matrix.num_layers, shift_scale) == (TINY_G["style_dim"], 8, 6.0)
    assert {"A_optim", "ranges", "step", "rng"} <= set(checkpoint)
    stored = np.load(f"{config.store}/ranges-synth-regressor.npy")
    assert np.array_equal(checkpoint["ranges"].numpy(), stored, equal_nan=True)

    weights = tmp_path / "weights"
    (weights / "demo").mkdir(parents=True)
    shutil.copy(summary.export, weights / "demo" / "directions.safetensors")
    directions, entries = WeightsRegistry(weights).load("demo-directions")
    assert entries["shift_scale"] == 6.0 and entries["face3d"] == "synth-regressor"
    ranges = ParamRanges(np.asarray(entries["ranges"], np.float64))  # as tasks.reenact reads it
    assert np.allclose(ranges.table[:15], stored[:15])
    assert torch.allclose(directions.linear.weight, matrix.linear.weight.half().float())
    reenactor = Reenactor(generator, directions.float(), ranges, entries["shift_scale"], truncation=0.7)
    source, driving = torch.zeros(1, NUM_PARAMS), torch.zeros(3, NUM_PARAMS)
    driving[:, 0] = torch.tensor([-20.0, 0.0, 20.0])
    with torch.no_grad():
        images = reenactor(generator.get_latent(torch.randn(1, 64)).unsqueeze(1).repeat(1, generator.n_latent, 1),
                           source, driving)
    assert images.shape == (3, 3, 32, 32) and torch.isfinite(images).all()
    assert not torch.equal(images[0], images[2])


def test_ranges_measured_on_the_generator(world, tmp_path):
    stage = stage_for(tiny(world, tmp_path / "m", ranges="measure", ranges_samples=64))
    table = stage.ranges.table
    assert (table[3:15, 1] > table[3:15, 0]).all() and np.isnan(table[15:]).all()


# ------------------------------------------------------------------------------------------- DECA as the Net3D

@contextmanager
def one_torch_thread():
    """As the loop runs with QUICK's threads=1: ResNet-50 on two busy cores is several times faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def deca_world(world, tmp_path_factory):
    """(weights dir, DecaNet3D, store path): the store has one clip of 4 frames read by that DecaNet3D."""
    root, generator = world
    weights = write_deca_flame_weights(tmp_path_factory.mktemp("deca-weights"))
    net3d = load_deca_net3d(WeightsRegistry(weights), torch.device("cpu"))
    with one_torch_thread():
        write_world(root, generator, net3d, clips=1, frames=4, name="deca-world.zarr")
    return weights, net3d, root / "deca-world.zarr"


def deca_config(world, deca_world, out, **changes) -> DirectionsTrainingConfig:
    weights, _, store = deca_world
    settings = {"face3d": "deca", "weights_dir": str(weights), "store": str(store), "batch_size": 2,
                "validation_count": 2, "sample_count": 2, "log_every": 1, **changes}
    return tiny(world, out, **settings)


def known_faces(net3d, batch: int = 2, seed: int = 0) -> tuple[Faces, torch.Tensor, torch.Tensor]:
    """Faces of random DECA poses (axis-angle), jaws, expressions and identities, and those poses and jaws."""
    rng = torch.Generator().manual_seed(seed)
    pose, jaw = 0.3 * torch.randn(batch, 3, generator=rng), 0.2 * torch.rand(batch, generator=rng)
    params = torch.cat([euler_from_axis_angle(pose), jaw[:, None], torch.randn(batch, 11, generator=rng)], 1)
    shape = torch.randn(batch, net3d.shape_size, generator=rng)
    return Faces(params, torch.zeros_like(params), shape), pose, jaw


def test_deca_shape_term_is_the_flame_vertex_l1_under_the_official_camera(deca_world):
    """By hand: FLAME's own axis-angle path (the DECA code's pose, the 39 further expressions at zero), DECA's
    orthographic camera (8, 0, 0) and its 224 image (x 112 + 112); the L1 is the mean over vertices and x, y, z."""
    _, net3d, _ = deca_world
    faces, pose, jaw = known_faces(net3d)
    expression = torch.cat([faces.params[:, 4:], torch.zeros(2, 39)], 1)
    flame = net3d.flame(faces.shape, expression, torch.cat([pose, jaw[:, None], torch.zeros(2, 2)], 1))
    by_hand = flame.vertices * torch.tensor([1.0, -1.0, -1.0]) * 8 * 112 + 112
    torch.testing.assert_close(net3d.vertices(faces.params, faces.shape), by_hand, atol=1e-3, rtol=1e-5)
    camera = torch.tensor([[8.0, 0.0, 0.0]]).expand(2, -1)
    torch.testing.assert_close(net3d.landmarks(faces.params, faces.shape),
                               orthographic_projection(flame.landmarks, camera) * 112 + 112, atol=1e-3, rtol=1e-5)

    assert net3d.shape_distance(faces, faces) == 0
    other, other_pose, other_jaw = known_faces(net3d, seed=1)
    other_flame = net3d.flame(other.shape, torch.cat([other.params[:, 4:], torch.zeros(2, 39)], 1),
                              torch.cat([other_pose, other_jaw[:, None], torch.zeros(2, 2)], 1))
    expected = 8 * 112 * (flame.vertices - other_flame.vertices).abs().mean()
    distance = net3d.shape_distance(faces, other)
    assert distance > 0 and torch.isclose(distance, expected, rtol=1e-4)


def test_train_directions_with_deca_runs_every_phase_with_finite_terms(world, deca_world, tmp_path):
    config = deca_config(world, deca_world, tmp_path / "d", steps=3, synthetic_steps=1, real_steps=1, paired_steps=1,
                         ranges="store")
    summary = train_directions(config)
    rows = [json.loads(line) for line in open(f"{config.out}/stats.jsonl")]
    assert [row["phase"] for row in rows] == [0, 1, 2] and summary.steps == 3
    for row in rows:
        assert all(np.isfinite(row[name]) for name in ("loss", "shape", "mouth", "eye", "pixel")), row
        assert row["shape"] > 0
    assert read_checkpoint(summary.checkpoint)["face3d"] == "deca"


def test_deca_gradients_reach_A_only_and_the_stage_wires_the_source_identity(world, deca_world, tmp_path):
    with one_torch_thread():
        check_gradients_and_shape_wiring(stage_for(deca_config(world, deca_world, tmp_path / "g", ranges="official")))


def check_gradients_and_shape_wiring(stage: DirectionsStage) -> None:
    frozen = {"deca": stage.net3d.encoder, "G": stage.generator}
    before = {name: {k: v.clone() for k, v in network.state_dict().items()} for name, network in frozen.items()}
    A_before = stage.A.linear.weight.detach().clone()
    torch.manual_seed(1)
    pairs = stage._pairs("synthetic")
    total, terms = stage.losses(pairs, stage.A)
    total.backward()
    assert stage.A.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for network in frozen.values() for p in network.parameters())

    # the shape term: the reenacted face's reading with its own identity against the truth with the source's
    with torch.no_grad():
        reenacted = stage._render(pairs.source_wplus, stage.A(pairs.delta))
        params, shape = split_reading(stage.net3d.read(reenacted))
        truth_params = stage._from_shift(pairs.truth)
        expected = (stage.net3d.vertices(params, shape) - stage.net3d.vertices(truth_params, pairs.truth_shape)).abs()
    assert pairs.truth_shape.shape == (2, 100)
    torch.testing.assert_close(terms["shape"].detach(), expected.mean(), rtol=1e-4, atol=1e-4)

    stage.A.zero_grad()
    stage.train_step(0, None)
    assert not torch.equal(stage.A.linear.weight, A_before)
    for name, network in frozen.items():
        assert differing_tensors({name: before[name]}, {name: network.state_dict()}, (name,)) == []


def test_missing_deca_or_flame_weights_are_named(tmp_path):
    config = DirectionsTrainingConfig(face3d="deca", weights_dir=str(tmp_path))
    with pytest.raises(MissingWeightsError, match="deca_model.tar"):
        build_net3d(config, torch.device("cpu"))
    (tmp_path / "deca").mkdir()
    (tmp_path / "deca" / "deca_model.tar").write_bytes(b"not read: FLAME is looked for first")
    with pytest.raises(MissingWeightsError, match="generic_model.pkl"):
        build_net3d(config, torch.device("cpu"))
    with pytest.raises(ValueError, match="face3d_weights"):
        DirectionsTrainingConfig(face3d="deca", face3d_weights="regressor.safetensors")
