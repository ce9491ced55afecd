"""Speed of every evaluation metric, with random weights, on CPU and (when present) CUDA.

    python benchmarks/metrics.py                                # all metrics, CPU (and CUDA when present)
    python benchmarks/metrics.py --device cuda --metrics lpips,fid-features --batch 64
    python benchmarks/metrics.py --help

Per metric: the median time of one call over `--repeats` calls after one warm-up, and its throughput: image pairs/s
for CSIM, LPIPS, APD+AED; images/s for the FID/KID Inception features and for the linearity sweep (G draws, the
Net3D reads); one set comparison for FID (2048-d statistics, scipy's sqrtm) and KID (1000 vs 1000 features, 100
subsets), which run in numpy on the CPU whatever the device. Networks have random weights: the same cost as the
real ones, not their numbers. Inputs are 256x256 renders of the synthetic head. APD and AED alone are arithmetic on
face parameters; the Net3D that reads those parameters is timed by benchmarks/face3d.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.directions import NUM_PARAMS, DirectionMatrix, ParamRanges  # noqa: E402
from models.identity import build_identity  # noqa: E402
from models.metrics.fid import FeatureStatistics, frechet_distance, kernel_inception_distance  # noqa: E402
from models.synth.head import sample_identity  # noqa: E402
from models.synth.render import render_with_landmarks  # noqa: E402
from storage import networks  # noqa: E402
from storage.weights import WEIGHT_FILES, WeightsRegistry, build  # noqa: E402
from tasks.metrics import (csim, expression_distance, inception_features, lpips, pose_distance,  # noqa: E402
                           sweep_directions)


@dataclass(frozen=True)
class Inputs:
    """What every case draws from: renders, their landmarks and face parameters."""

    images: np.ndarray  # uint8 [B, 256, 256, 3]
    references: np.ndarray  # the same people at other poses
    landmarks: np.ndarray  # [68, 2] of one frontal render
    params: np.ndarray  # [B, 15]


def make_inputs(batch: int) -> Inputs:
    rng = np.random.default_rng(0)
    params = np.zeros((2 * batch, NUM_PARAMS), np.float32)
    params[:, :3] = rng.uniform(-20, 20, (2 * batch, 3))
    params[:, 3] = rng.uniform(0, 0.3, 2 * batch)
    frames, points = render_with_landmarks(sample_identity(1), params)
    return Inputs(frames[:batch], frames[batch:], points[0], params)


def _csim(name: str) -> Callable[[str, Inputs], tuple[Callable[[], object], int]]:
    def prepare(device: str, inputs: Inputs):
        if name == "arcface":
            backbone = build(WEIGHT_FILES["arcface-ir-se50"].builder, WEIGHT_FILES["arcface-ir-se50"].config)
            embedder = build_identity("arcface", backbone=backbone, device=device)
        else:
            embedder = build_identity("dlib")
        return (lambda: csim(embedder, inputs.images, inputs.references)), len(inputs.images)
    return prepare


def _lpips(device: str, inputs: Inputs):
    network = networks.lpips(WeightsRegistry(), device, random_backbone=True)
    return (lambda: lpips(network, inputs.images, inputs.references, batch_size=len(inputs.images))), len(inputs.images)


def _fid_features(device: str, inputs: Inputs):
    network = networks.fid_inception(WeightsRegistry(), device, random_weights=True)
    return (lambda: inception_features(network, inputs.images, batch_size=len(inputs.images))), len(inputs.images)


def _fid(device: str, inputs: Inputs):
    rng = np.random.default_rng(1)
    first = FeatureStatistics(2048).update(rng.random((3000, 2048)))
    second = FeatureStatistics(2048).update(rng.random((3000, 2048)) * 1.1)
    return (lambda: frechet_distance(first.mean, first.covariance, second.mean, second.covariance)), 1


def _kid(device: str, inputs: Inputs):
    rng = np.random.default_rng(2)
    a, b = rng.random((1000, 2048)), rng.random((1000, 2048)) * 1.1
    return (lambda: kernel_inception_distance(a, b)), 1


def _apd_aed(device: str, inputs: Inputs):
    ranges = ParamRanges.load()
    params = np.tile(inputs.params, (max(1, 10_000 // len(inputs.params)), 1))
    shifted = params + 1.0

    def call():
        pose_distance(params, shifted, "bench")
        expression_distance(params, shifted, ranges, "bench")
    return call, len(params)


def _linearity(device: str, inputs: Inputs):
    """One direction at two magnitudes for batch/2 sources: G 256 px (the official config) and the regressor."""
    entry = WEIGHT_FILES["stylegan2-voxceleb256"]
    torch.manual_seed(0)
    generator = build(entry.builder, entry.config).to(device).eval()
    directions = DirectionMatrix().to(device)
    face3d = networks.face3d_backend(WeightsRegistry(), "synth-regressor", device=device)
    sources = max(1, len(inputs.images) // 2)
    wplus = generator.wplus_from_styles([torch.randn(sources, 512, device=device)])

    def call():
        sweep_directions(generator, directions, face3d, wplus, ParamRanges.load(), magnitudes=(-3.0, 3.0),
                         which=("yaw",), batch_size=len(inputs.images), landmarks=inputs.landmarks)
    return call, 3 * sources  # the sources once, then two shifted images each


@dataclass(frozen=True)
class Case:
    unit: str  # what `per_call` counts
    prepare: Callable[[str, Inputs], tuple[Callable[[], object], int]]
    gpu: bool  # runs on the GPU when asked (else the CPU only)


CASES: dict[str, Case] = {
    "csim-dlib": Case("pairs", _csim("dlib"), gpu=False),
    "csim-arcface": Case("pairs", _csim("arcface"), gpu=True),
    "lpips": Case("pairs", _lpips, gpu=True),
    "fid-features": Case("images", _fid_features, gpu=True),
    "fid": Case("set pairs", _fid, gpu=False),
    "kid": Case("set pairs", _kid, gpu=False),
    "apd+aed": Case("pairs", _apd_aed, gpu=False),
    "linearity": Case("images", _linearity, gpu=True),
}


def measure(name: str, device: str, inputs: Inputs, repeats: int) -> dict:
    case = CASES[name]
    call, per_call = case.prepare(device, inputs)
    synchronise = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        for run in range(repeats + 1):
            synchronise()
            started = time.perf_counter()
            call()
            synchronise()
            if run:  # the first is the warm-up
                times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"metric": name, "device": device, "per_call": per_call, "unit": case.unit, "median_s": median,
            "best_s": min(times), "per_s": per_call / median}


def format_table(rows: list[dict]) -> str:
    header = ("metric", "device", "per call", "median s", "best s", "throughput")
    lines = [(row["metric"], row["device"], str(row["per_call"]), f"{row['median_s']:.3f}", f"{row['best_s']:.3f}",
              f"{row['per_s']:.3g} {row['unit']}/s") for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(cell.ljust(width) if n < 2 else cell.rjust(width)
                               for n, (cell, width) in enumerate(zip(line, widths))).rstrip()
                     for line in (header, *lines))


def _names(text: str) -> list[str]:
    names = [item for item in text.split(",") if item]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)}; choose from {', '.join(CASES)}")
    return names


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CPU, plus CUDA when available (default)")
    parser.add_argument("--metrics", type=_names, default=list(CASES),
                        help=f"comma-separated subset of {','.join(CASES)} (default: all)")
    parser.add_argument("--batch", type=int, default=None, help="images (pairs) per call; default 8 CPU, 32 CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up (median reported)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    rows = []
    for device in devices:
        inputs = make_inputs(args.batch or (32 if device == "cuda" else 8))
        for name in args.metrics:
            if device == "cuda" and not CASES[name].gpu:
                continue  # CPU-only: measured in the CPU pass
            started = time.perf_counter()
            rows.append(measure(name, device, inputs, args.repeats))
            print(f"{name} on {device}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads ({os.cpu_count()} cores), GPU: {gpu}; "
          f"RANDOM WEIGHTS (timing only, not the metrics' values); 256x256 renders; median of {args.repeats} calls")
    print(format_table(rows))


if __name__ == "__main__":
    main()
