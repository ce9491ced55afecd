"""Train the synthetic-world face3d regressor (`models.face3d.regressor`) on renders made while it trains.

    python -m training.face3d_regressor --install                # the shipped recipe: 14 min on 2 CPU cores
    python -m training.face3d_regressor --steps 200 --out outputs/regressor  # a quick look

The learning rate (warm-up, then cosine) runs on whichever budget ends first, `steps` or `max_minutes`, so a busy
machine still anneals fully; it just takes fewer steps (the shipped weights: 11,125 steps, 22k renders, 14 min on a
quiet machine). Each step renders a few new faces (random identity, pose within ±35° yaw, ±20° pitch, ±15° roll, jaw and the 11
expressions over the ranges the synthetic clips use) into a pool, and trains on a batch drawn from the pool. The
crop is the network's square around the true landmarks, jittered as preprocessing's crops vary (scale ±10 %,
shift ±8 px of the paper's 256 crop), so the network reads renders, store crops and photographs alike. Seeded;
checkpoints are safetensors; `--install` writes the final weights (fp16) to `models/data/face3d_synth_regressor.safetensors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.detect.align import CROP_PER_EXTENT as PAPER_CROP_PER_EXTENT
from models.directions import NUM_PARAMS, PARAM_NAMES
from models.face3d.regressor import CROP_PER_EXTENT, SHAPE_SIZE, Face3DRegressor, crop_boxes, regressor_input
from models.synth.head import EXPRESSION_NAMES, SHAPE_NAMES, sample_identity
from models.synth.motion import EXPRESSION_RANGES, JAW_RANGE  # noqa: F401  (training covers them uniformly)
from models.synth.render import render_with_landmarks
from storage.checkpoints import save_safetensors
from storage.weights import BUNDLED_DIR, WEIGHT_FILES

INSTALLED = BUNDLED_DIR / WEIGHT_FILES["face3d-synth-regressor"].filename  # what --install replaces

OUTPUT_NAMES = (*PARAM_NAMES, *(f"shape_{name}" for name in SHAPE_NAMES))
HELDOUT_SEED = 20_240_501  # the fixed evaluation renders: never drawn by training (it seeds from `seed`)


@dataclass
class RegressorTrainingConfig:
    seed: int = 0
    steps: int = 12000
    max_minutes: float = 14.0  # wall-clock budget: the schedule ends at `steps` or here, whichever comes first
    batch_size: int = 48
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    pool_size: int = 6000  # renders kept; new ones replace the oldest
    warmup_renders: int = 192  # rendered before the first step
    renders_per_step: float = 2.0  # new renders per step on average (a render costs about a third of a step)
    frames_per_identity: int = 4  # one render call draws this many poses of one identity
    max_yaw: float = 35.0
    max_pitch: float = 20.0
    max_roll: float = 15.0
    jaw_closed_share: float = 0.3  # of faces drawn with the jaw closed (talking faces often are)
    neutral_share: float = 0.3  # chance that an expression sits near 0 instead of anywhere in its range
    scale_jitter: float = 0.10
    shift_jitter_px: float = 8.0  # in pixels of the 256 crop
    shape_weight: float = 0.5
    threads: int = 2
    eval_count: int = 200
    checkpoint_every: int = 500
    out: str = "outputs/face3d_regressor"
    install: bool = False  # copy the final fp16 weights to INSTALLED (the bundled file)


def sample_params(rng: np.random.Generator, count: int, config: RegressorTrainingConfig) -> np.ndarray:
    """float32 [count, 15] in `PARAM_NAMES` order: uniform pose, jaw and expressions (some left near neutral)."""
    params = np.zeros((count, NUM_PARAMS), np.float32)
    limits = np.array([config.max_yaw, config.max_pitch, config.max_roll])
    params[:, :3] = rng.uniform(-limits, limits, (count, 3))
    params[:, 3] = np.where(rng.random(count) < config.jaw_closed_share, 0.0, rng.uniform(*JAW_RANGE, count))
    low, high = np.array([EXPRESSION_RANGES[name] for name in EXPRESSION_NAMES]).T
    expressions = rng.uniform(low, high, (count, len(low)))
    neutral = rng.random((count, len(low))) < config.neutral_share
    params[:, 4:] = np.where(neutral, np.clip(rng.normal(0, 0.05, expressions.shape), low, high), expressions)
    return params


def target_normalisation(config: RegressorTrainingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """scale, offset [21] that map each output's training range onto about [-1, 1]."""
    ranges = [(-config.max_yaw, config.max_yaw), (-config.max_pitch, config.max_pitch),
              (-config.max_roll, config.max_roll), JAW_RANGE, *(EXPRESSION_RANGES[n] for n in EXPRESSION_NAMES),
              *[(-1.0, 1.0)] * SHAPE_SIZE]
    low, high = torch.tensor(ranges, dtype=torch.float32).T
    return (high - low) / 2, (high + low) / 2


def render_faces(rng: np.random.Generator, count: int, config: RegressorTrainingConfig):
    """count renders: images uint8 [N, 256, 256, 3], true landmarks [N, 68, 2], targets [N, 21] (params + shape)."""
    images, landmarks, targets = [], [], []
    for start in range(0, count, config.frames_per_identity):
        identity = sample_identity(rng)
        params = sample_params(rng, min(config.frames_per_identity, count - start), config)
        frames, points = render_with_landmarks(identity, params)
        images.append(frames)
        landmarks.append(points)
        targets.append(np.concatenate([params, np.tile(np.float32(identity.shape), (len(params), 1))], axis=1))
    return np.concatenate(images), np.concatenate(landmarks), np.concatenate(targets).astype(np.float32)


def heldout_renders(count: int = 300, seed: int = HELDOUT_SEED):
    """The fixed evaluation set (default ranges): images, true landmarks, targets [N, 21]."""
    return render_faces(np.random.default_rng(seed), count, RegressorTrainingConfig())


def jittered_boxes(landmarks: np.ndarray, rng: np.random.Generator, config: RegressorTrainingConfig) -> np.ndarray:
    """The network's crop of each face, randomly rescaled and shifted as preprocessing's crops vary (shifts are
    pixels of the paper's 256 crop, whose side is `PAPER_CROP_PER_EXTENT` landmark extents)."""
    boxes = crop_boxes(landmarks)
    side = boxes[:, 2:3] - boxes[:, 0:1]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    paper_side = side * PAPER_CROP_PER_EXTENT / CROP_PER_EXTENT
    centre = centre + rng.uniform(-1, 1, centre.shape) * config.shift_jitter_px / 256 * paper_side
    side = side * (1 + rng.uniform(-config.scale_jitter, config.scale_jitter, side.shape))
    return np.concatenate([centre - side / 2, centre + side / 2], axis=1).astype(np.float32)


def save_regressor(network: Face3DRegressor, path: str | Path, dtype: torch.dtype = torch.float16,
                   metadata: dict | None = None) -> Path:
    """The network as the weights registry reads it (`face3d-synth-regressor`): safetensors in `dtype` (fp16 by
    default), its builder and constructor arguments in the metadata, written atomically and readable by everyone."""
    path = Path(path)
    state = {name: (value.to(dtype) if value.is_floating_point() else value)
             for name, value in network.state_dict().items()}
    save_safetensors(state, path, {"builder": "models.face3d.regressor:Face3DRegressor", "config": network.config,
                                   **(metadata or {})})
    path.chmod(0o644)
    return path


@torch.no_grad()
def predict(network: Face3DRegressor, images: np.ndarray, landmarks: np.ndarray, batch: int = 64) -> np.ndarray:
    """[N, 21] predictions on the unjittered crops of the given landmarks."""
    network.eval()
    outputs = []
    for start in range(0, len(images), batch):
        pixels = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2)
        boxes = torch.from_numpy(crop_boxes(landmarks[start:start + batch]))
        outputs.append(network(regressor_input(pixels, boxes)))
    return torch.cat(outputs).numpy()


def mean_absolute_errors(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE per output name (degrees for angles; the head's units otherwise)."""
    errors = np.abs(predicted - truth[:, :predicted.shape[1]]).mean(axis=0)
    return {name: float(value) for name, value in zip(OUTPUT_NAMES, errors)}


class RenderPool:
    """A ring buffer of renders that training draws its batches from."""

    def __init__(self, size: int):
        self.images = np.zeros((size, 256, 256, 3), np.uint8)
        self.landmarks = np.zeros((size, 68, 2), np.float32)
        self.targets = np.zeros((size, NUM_PARAMS + SHAPE_SIZE), np.float32)
        self.filled, self.next, self.added = 0, 0, 0

    def add(self, images: np.ndarray, landmarks: np.ndarray, targets: np.ndarray) -> None:
        for image, points, target in zip(images, landmarks, targets):
            self.images[self.next], self.landmarks[self.next], self.targets[self.next] = image, points, target
            self.next = (self.next + 1) % len(self.images)
            self.filled = min(self.filled + 1, len(self.images))
            self.added += 1

    def sample(self, rng: np.random.Generator, count: int):
        index = rng.integers(0, self.filled, count)
        return self.images[index], self.landmarks[index], self.targets[index]


def learning_rate(peak: float, done: float, warmup: float = 0.03) -> float:
    """Linear warm-up over the first 3 %, then a cosine down to zero at done = 1."""
    if done < warmup:
        return peak * max(done / warmup, 0.02)
    return peak * 0.5 * (1 + math.cos(math.pi * (done - warmup) / (1 - warmup)))


def train(config: RegressorTrainingConfig) -> tuple[Face3DRegressor, dict[str, float]]:
    print(json.dumps(dataclasses.asdict(config), indent=1))
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    network = Face3DRegressor()
    scale, offset = target_normalisation(config)
    network.target_scale.copy_(scale)
    network.target_offset.copy_(offset)
    weights = torch.ones(NUM_PARAMS + SHAPE_SIZE)
    weights[NUM_PARAMS:] = config.shape_weight
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    started = time.monotonic()
    pool = RenderPool(config.pool_size)
    pool.add(*render_faces(rng, config.warmup_renders, config))
    owed, trained = 0.0, 0
    progress = tqdm(range(config.steps), desc="face3d regressor", mininterval=10)
    for step in progress:
        # the schedule runs on whichever budget is nearer its end, so a busy machine still anneals fully
        done = max(step / config.steps, (time.monotonic() - started) / (config.max_minutes * 60))
        if done >= 1:
            print(f"stopping at step {step}: the {config.max_minutes} min budget is spent")
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(config.learning_rate, done)
        owed += config.renders_per_step
        if owed >= config.frames_per_identity:
            pool.add(*render_faces(rng, config.frames_per_identity, config))
            owed -= config.frames_per_identity
        images, landmarks, targets = pool.sample(rng, config.batch_size)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        inputs = regressor_input(pixels, torch.from_numpy(jittered_boxes(landmarks, rng, config)))
        network.train()
        predicted = network.normalised(inputs)
        goal = (torch.from_numpy(targets) - network.target_offset) / network.target_scale
        loss = (F.smooth_l1_loss(predicted, goal, reduction="none", beta=0.1) * weights).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        trained += 1
        progress.set_postfix(loss=f"{loss.item():.4f}", pool=pool.filled, refresh=False)
        if (step + 1) % config.checkpoint_every == 0:
            save_regressor(network, out / f"step{step + 1:06d}.safetensors", dtype=torch.float32)
    minutes = (time.monotonic() - started) / 60

    images, landmarks, targets = heldout_renders(config.eval_count)
    errors = mean_absolute_errors(predict(network, images, landmarks), targets)
    summary = {"train_minutes": round(minutes, 2), "steps": trained, "renders": pool.added,
               "heldout": config.eval_count, "mae": {k: round(v, 4) for k, v in errors.items()}}
    print(json.dumps(summary, indent=1))
    save_regressor(network, out / "final.safetensors",
                           metadata={"training": dataclasses.asdict(config), "summary": summary})
    if config.install:
        save_regressor(network, INSTALLED, metadata={"training": dataclasses.asdict(config), "summary": summary})
        print(f"installed {INSTALLED}")
    return network, errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(RegressorTrainingConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=field.default)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            parser.add_argument(flag, type=kind, default=field.default)
    train(RegressorTrainingConfig(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
