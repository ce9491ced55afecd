"""Helpers of the training tests: small stores written straight into the Zarr layout, and tiny stage configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.directions import NUM_PARAMS, ParamRanges
from models.face3d.regressor import SHAPE_SIZE as SYNTH_SHAPE_SIZE
from models.stylegan2 import Generator
from storage.store import ClipKey, ClipStore
from storage.weights import WeightsRegistry
from training.common.checkpoints import Export, save_export

TINY_G = {"size": 32, "style_dim": 64, "n_mlp": 2, "channel_max": 32}
TINY_E = {"num_layers": 18, "channel_max": 16, "input_size": 32}
# fast settings: in-process data, one thread (stable timing on a busy machine), logs every 2 steps
QUICK = {"workers": 0, "threads": 1, "log_every": 2, "image_every": 1000, "batch_size": 4}


def write_store(root: Path, frames: np.ndarray, clips: int, chunk_frames: int = 8,
                has_face: np.ndarray | None = None) -> ClipStore:
    """`clips` clips, each holding `frames` (uint8 [T, H, W, 3]) shifted by the clip number (so clips differ)."""
    store = ClipStore.open(root, chunk_frames=chunk_frames)
    for number in range(clips):
        with store.write_clip(ClipKey(f"id{number:02d}", "video", "00001")) as clip:
            clip.put("crops", np.clip(frames.astype(np.int16) + 3 * number, 0, 255).astype(np.uint8))
            if has_face is not None:
                clip.put("has_face", has_face)
    return store


def flat_colour_frames(count: int, size: int, colour=(200, 60, 30), seed: int = 0) -> np.ndarray:
    """A flat colour with a little noise: an easy dataset whose mean colour G must learn."""
    noise = np.random.default_rng(seed).integers(-10, 11, (count, size, size, 3))
    return np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)


def numbered_frames(count: int, size: int) -> np.ndarray:
    """Frame t is the constant 2t + 1: every crop says which frame it is."""
    return np.broadcast_to((2 * np.arange(count) + 1)[:, None, None, None], (count, size, size, 3)).astype(np.uint8)


def tiny_generator_file(path: Path, seed: int = 0) -> Generator:
    """A random tiny G exported as train-generator exports it (safetensors with its constructor arguments)."""
    torch.manual_seed(seed)
    generator = Generator(**TINY_G).eval()
    save_export(Export(generator, "models.stylegan2:Generator", dict(TINY_G), "g_ema"), path, torch.float32, {})
    return generator


@torch.no_grad()
def generator_frames(generator: Generator, count: int, seed: int = 1, truncation: float = 0.7) -> np.ndarray:
    """uint8 renders of G itself near its mean w: crops an encoder of G can invert exactly."""
    z = torch.randn(count, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    mean = generator.mean_latent(512, generator=torch.Generator().manual_seed(seed + 1))
    images, _ = generator([z], truncation=truncation, truncation_latent=mean, randomize_noise=False)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def differing_tensors(first: dict, second: dict, keys: tuple[str, ...]) -> list[str]:
    """Names of the tensors that differ between two checkpoints' state dicts under `keys` ([] when equal)."""
    return [f"{key}.{name}" for key in keys for name in first[key] if not torch.equal(first[key][name],
                                                                                   second[key][name])]


FRAMES = 12  # per clip of `write_world`
STORED_COLUMNS = {"synth-regressor": NUM_PARAMS + SYNTH_SHAPE_SIZE, "deca": NUM_PARAMS + 100}  # the backends' rows


def write_world(root, generator, net3d=None, clips: int = 2, frames: int = FRAMES, name: str = "world.zarr"
                ) -> ClipStore:
    """A store of G's own renders with the stages encode-dataset writes: face3d (read by the training Net3D, the
    synth-regressor by default), inversion (the W+ that rendered each crop) and the ranges table of those readings."""
    from training.directions import SynthNet3D

    store = ClipStore.open(root / name, chunk_frames=8)
    net3d = net3d or SynthNet3D(WeightsRegistry().get("face3d-synth-regressor"), torch.device("cpu"))
    readings = []
    for number in range(clips):
        key = ClipKey(f"id{number:02d}", "video", "00001")
        with torch.no_grad():
            z = torch.randn(frames, generator.style_dim, generator=torch.Generator().manual_seed(number))
            wplus = generator.get_latent(z).unsqueeze(1).repeat(1, generator.n_latent, 1)
            images = generator.synthesis(wplus).image.clamp(-1, 1)
            reading = net3d.read(images)
            params = torch.cat([reading, torch.zeros(frames, STORED_COLUMNS[net3d.name] - reading.shape[1])], 1)
            params = params.numpy()
        crops = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        with store.write_clip(key) as clip:
            clip.put("crops", crops)
        with store.write_stage(key, "face3d") as stage:
            stage.put("params", params.astype(np.float32))
            stage.put("landmarks", np.zeros((frames, 68, 2), np.float32))
            stage.put("found", np.ones(frames, bool))
            stage.set_attrs(backend=net3d.name)
        with store.write_stage(key, "inversion") as stage:
            stage.put("wplus", wplus.numpy().astype(np.float16))
            stage.set_attrs(encoder="test")
        readings.append(params[:, :NUM_PARAMS])
    np.save(store.root / f"ranges-{net3d.name}.npy", ParamRanges.measure(np.concatenate(readings)).table)
    return store


def assert_resume_is_bitwise(train, config_at, stop_after: int, networks: tuple[str, ...],
                             optimisers: tuple[str, ...]) -> None:
    """A run stopped after `stop_after` steps and resumed ends with bit for bit the networks and optimiser moments
    of an unbroken one: `train(config, stop_after=None)` is the stage's entry point, `config_at(name)` its config
    with the run folder `name`."""
    from training.common.checkpoints import read_checkpoint

    whole = train(config_at("whole"))
    train(config_at("broken"), stop_after=stop_after)
    resumed = train(config_at("broken"))
    assert (resumed.start_step, resumed.steps) == (stop_after, whole.steps)
    first, second = read_checkpoint(whole.checkpoint), read_checkpoint(resumed.checkpoint)
    assert differing_tensors(first, second, networks) == []
    for key in optimisers:
        assert first[key]["state"][0]["exp_avg"].equal(second[key]["state"][0]["exp_avg"]), key
