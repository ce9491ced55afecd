"""Training speed per stage: steps/s and images/s of the real loop (data from a Zarr store, lazy regularisers,
EMA, logging), on CPU and, when CUDA is present, on the GPU in fp32, bf16 and fp16 (autocast).

    python benchmarks/train.py                       # the CPU presets (a minute or two on 2 cores)
    python benchmarks/train.py --presets generator-demo256,encoder-demo --steps 24
    python benchmarks/train.py --help

Presets (the networks' sizes are in the output):
    generator-tiny32    G and D at 32 px, style 64, channel_max 32 (the tests' network)
    generator-bundled   the bundled demo G's settings (training/configs/demo-generator.yaml: 64 px, style 256)
    encoder-bundled     the bundled demo encoder's settings (demo-encoder.yaml: IR-SE-18 at 64 px) on that G
    directions-bundled  the bundled demo A's settings (demo-directions.yaml) in the synthetic phase on that G
    generator-demo256   G and D at 256 px, style 512, channel_max 128 (a demo-sized generator, ~5 M parameters)
    generator-official  the paper's G and D (256 px, channel multiplier 1): CUDA only
    encoder-demo        e4e IR-SE-50 with channel_max 64 reading 256 crops, inverting generator-demo256's G
    encoder-official    the official e4e (209 M parameters) inverting the paper's G: CUDA only
    directions-demo     A in the synthetic phase (sources and targets from generator-demo256's G, the
                        synth-regressor reading the results, ranges measured on 64 G samples)
    directions-official A in the synthetic phase on the paper's G: CUDA only

Each run trains `--steps` steps; the speed is that of the second half (the first half warms up: allocator,
autotuning, DataLoader workers). A step of the generator is one D and one G update, plus R1 every 16 and path
length every 4 steps, as in training. The store holds synthetic 256x256 crops made here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.store import ClipKey, ClipStore  # noqa: E402
from training.common.checkpoints import Export, save_export  # noqa: E402
from training.directions import DirectionsTrainingConfig, train_directions  # noqa: E402
from training.encoder import EncoderTrainingConfig, train_encoder  # noqa: E402
from training.generator import GeneratorTrainingConfig, train_generator  # noqa: E402

TINY32 = {"size": 32, "style_dim": 64, "n_mlp": 2, "channel_max": 32}
DEMO256 = {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_max": 128}
OFFICIAL256 = {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 1}
SYNTHETIC_PHASE = {"synthetic_steps": 10**9, "real_steps": 0, "paired_steps": 0, "ranges": "measure",
                   "ranges_samples": 64}
RUN_KEYS = {"store", "out", "steps", "batch_size", "log_every", "checkpoint_every", "image_every", "workers",
            "threads", "seed", "generator", "synthetic_steps", "real_steps", "paired_steps", "ranges",
            "real_source"}  # a config file's keys that belong to a run, not to the networks and losses


def bundled(stage: str) -> dict:
    """The network and loss settings of training/configs/demo-<stage>.yaml (the bundled demo set's recipe)."""
    settings = yaml.safe_load((ROOT / "training" / "configs" / f"demo-{stage}.yaml").read_text())
    return {key: value for key, value in settings.items() if key not in RUN_KEYS}


BUNDLED_G = {key: bundled("generator")[key] for key in ("size", "style_dim", "n_mlp", "channel_max")}


@dataclass(frozen=True)
class Preset:
    stage: str  # "generator", "encoder" or "directions"
    settings: dict
    cpu_batch: int
    gpu_batch: int
    generator: dict | None = None  # the encoder's or the directions' frozen G
    cuda_only: bool = False


PRESETS: dict[str, Preset] = {
    "generator-tiny32": Preset("generator", TINY32, cpu_batch=8, gpu_batch=32),
    "generator-bundled": Preset("generator", bundled("generator"), cpu_batch=8, gpu_batch=32),
    "encoder-bundled": Preset("encoder", bundled("encoder"), cpu_batch=8, gpu_batch=32, generator=BUNDLED_G),
    "directions-bundled": Preset("directions", {**bundled("directions"), **SYNTHETIC_PHASE}, cpu_batch=8,
                                 gpu_batch=32, generator=BUNDLED_G),
    "generator-demo256": Preset("generator", DEMO256, cpu_batch=4, gpu_batch=16),
    "generator-official": Preset("generator", OFFICIAL256, cpu_batch=4, gpu_batch=16, cuda_only=True),
    "encoder-demo": Preset("encoder", {"num_layers": 50, "channel_max": 64}, cpu_batch=4, gpu_batch=16,
                           generator=DEMO256),
    "encoder-official": Preset("encoder", {}, cpu_batch=2, gpu_batch=8, generator=OFFICIAL256, cuda_only=True),
    "directions-demo": Preset("directions", SYNTHETIC_PHASE, cpu_batch=4, gpu_batch=12, generator=DEMO256),
    "directions-official": Preset("directions", SYNTHETIC_PHASE, cpu_batch=4, gpu_batch=12, generator=OFFICIAL256,
                                  cuda_only=True),
}


def make_store(root: Path, clips: int = 4, frames: int = 48) -> Path:
    """Smooth random 256x256 crops (compressible like faces, unlike noise), chunked as preprocessing writes them."""
    store = ClipStore.open(root / "bench.zarr")
    rng = np.random.default_rng(0)
    for number in range(clips):
        small = rng.integers(0, 255, (frames, 8, 8, 3)).astype(np.uint8)
        crops = np.repeat(np.repeat(small, 32, axis=1), 32, axis=2)
        with store.write_clip(ClipKey(f"id{number}", "video", "00001")) as clip:
            clip.put("crops", crops)
    return store.root


def generator_file(root: Path, settings: dict) -> Path:
    """A random G of `settings` as train-generator exports it, for the encoder to invert."""
    from models.stylegan2 import Generator

    path = root / f"g-{settings['size']}-{settings.get('channel_max', 512)}.safetensors"
    if not path.exists():
        save_export(Export(Generator(**settings), "models.stylegan2:Generator", settings, "g_ema"), path,
                    torch.float32, {})
    return path


def measure(name: str, preset: Preset, device: str, precision: str, steps: int, store: Path, work: Path,
            workers: int, threads: int | None) -> dict:
    batch = preset.gpu_batch if device == "cuda" else preset.cpu_batch
    common = {"store": str(store), "out": str(work / f"{name}-{device}-{precision}"), "steps": steps,
              "batch_size": batch, "device": device, "precision": precision, "log_every": steps // 2,
              "checkpoint_every": steps, "image_every": 10 * steps, "workers": workers, "threads": threads,
              "resume": False}
    if preset.stage == "generator":
        config = GeneratorTrainingConfig(**preset.settings, **common)
        summary = train_generator(config)
        parameters = {"g": _count("models.stylegan2:Generator", config.generator_config()),
                      "d": _count("models.stylegan2:Discriminator", config.discriminator_config())}
    elif preset.stage == "encoder":
        generator = generator_file(work, preset.generator)
        config = EncoderTrainingConfig(**preset.settings, generator=str(generator), **common)
        summary = train_encoder(config)
        encoder = config.encoder_config(preset.generator["size"], preset.generator["style_dim"])
        parameters = {"e": _count("models.e4e:Encoder4Editing", encoder)}
    else:
        generator = generator_file(work, preset.generator)
        config = DirectionsTrainingConfig(**preset.settings, generator=str(generator), **common)
        summary = train_directions(config)
        parameters = {"A": _count("models.directions:DirectionMatrix", {"shift_dim": preset.generator["style_dim"],
                                                                        "num_layers": config.num_layers_shift})}
    rows = [json.loads(line) for line in open(Path(summary.out) / "stats.jsonl")]
    rate = rows[-1]["steps_per_s"]  # the second half
    return {"preset": name, "device": device, "precision": precision, "batch": batch,
            "steps_per_s": round(rate, 3), "images_per_s": round(rate * batch, 2),
            "parameters_m": {key: round(value / 1e6, 2) for key, value in parameters.items()}}


def _count(builder: str, config: dict) -> int:
    from storage.weights import build

    with torch.device("meta"):
        return sum(p.numel() for p in build(builder, config).parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="generator-tiny32,generator-bundled,encoder-bundled,"
                                              "directions-bundled,generator-demo256,encoder-demo,directions-demo,"
                                              "generator-official,encoder-official,directions-official")
    parser.add_argument("--steps", type=int, default=16, help="steps per run (the second half is timed)")
    parser.add_argument("--devices", default="cpu,cuda", help="cuda is skipped when absent")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers reading the store")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    arguments = parser.parse_args(argv)
    devices = [d for d in arguments.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        work = Path(scratch)
        store = make_store(work)
        for name in arguments.presets.split(","):
            preset = PRESETS[name]
            for device in devices:
                if preset.cuda_only and device != "cuda":
                    continue
                for precision in (("fp32", "bf16", "fp16") if device == "cuda" else ("fp32",)):
                    started = time.perf_counter()
                    row = measure(name, preset, device, precision, arguments.steps, store, work,
                                  arguments.workers, arguments.threads)
                    row["wall_s"] = round(time.perf_counter() - started, 1)
                    results.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| preset | device | precision | batch | steps/s | images/s | parameters (M) |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        sizes = ", ".join(f"{key} {value}" for key, value in row["parameters_m"].items())
        print(f"| {row['preset']} | {row['device']} | {row['precision']} | {row['batch']} | {row['steps_per_s']} | "
              f"{row['images_per_s']} | {sizes} |")


if __name__ == "__main__":
    main()
