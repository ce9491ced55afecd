"""Speed and memory of reenact-video: the whole flow (decode -> detect -> 3DMM -> A -> G -> encode) and G + A alone.

    python benchmarks/reenact.py                              # CPU (and CUDA when present), random official weights
    python benchmarks/reenact.py --device cuda --batch-sizes 1,16,64,128 --precisions fp32,bf16,fp16
    python benchmarks/reenact.py --memory-seconds 10,120      # peak memory for a 2-minute driver, in subprocesses
    python benchmarks/reenact.py --help

The networks are the official release's architectures with fixed random weights (`tests.weights`), in their
official files, so loading and every code path are the real ones. The driving video is a bundled demo clip played
back and forth to the asked length (25 fps, with audio); the source is a bundled photograph.

Printed, per device and precision:
  * G + A alone: frames/s per batch size, and the ratio to batch 1 measured in the same process; then with a
    Feature Transformer at 32 px (random, the official G's 512 channels; its per-source part computed once, as
    reenactment does), and its cost as a ratio to G + A;
  * the whole flow on a `--seconds` driver: seconds per stage (driving track, source, render + encode), frames/s
    end to end and of the render stage, at batch 1 and the best batch of the G + A sweep, and their ratio;
  * tuning G on the source (`--tune-steps`, fp32 whatever the precision): ms per step on pixels alone and with
    LPIPS (a random AlexNet trunk: the real cost), and their ratio;
  * peak memory (RSS growth of a fresh process, and CUDA's peak allocation) of whole runs on drivers of each
    `--memory-seconds` length, with the ratio of the longest to the shortest: it must stay near 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_CLIP = ROOT / "data" / "demo" / "voxceleb" / "id00001" / "astronaut01" / "00001.mp4"
SOURCE = ROOT / "data" / "demo" / "photos" / "obama.jpg"


def make_driver(path: Path, seconds: float, fps: float = 25.0) -> Path:
    """The demo clip played forwards and backwards until `seconds` long, streamed to an mp4 with quiet audio."""
    import numpy as np

    from storage.video import VideoReader, VideoWriter, write_quiet_audio

    if path.exists():
        return path
    clip = np.concatenate(list(VideoReader(DEMO_CLIP).batches(64)))
    cycle = np.concatenate([clip, clip[::-1]])
    frames = int(round(seconds * fps))
    audio = write_quiet_audio(path.with_suffix(".wav"), frames / fps)
    with VideoWriter(path, fps, (clip.shape[2], clip.shape[1]), audio_from=audio,
                     audio_seconds=frames / fps) as writer:
        for start in range(0, frames, len(cycle)):
            writer.write(cycle[: min(len(cycle), frames - start)])
    audio.unlink()
    return path


def weights_dir(explicit: str | None, scratch: Path) -> Path:
    if explicit:
        return Path(explicit)
    from tests.weights import write_official_weights

    target = scratch / "weights"
    return target if (target / "A_matrix.pt").exists() else write_official_weights(target)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generator_sweep(config, batch_sizes: list[int], repeats: int, refine: bool = False) -> list[dict]:
    """Frames/s of G + A on random source codes and parameters, per batch size (after one warm-up call); with
    `refine`, through a random Feature Transformer at 32 px as well."""
    import torch

    from models.feature_transformer import FeatureTransformer
    from models.reenact import Reenactor
    from tasks.reenact import networks_for

    networks = networks_for(config)
    device = str(networks.device)
    reenactor = networks.reenactor
    generator = reenactor.generator
    image = None
    if refine:
        transformer = FeatureTransformer(generator.channels[32], 32, generator.size).to(device).eval()
        reenactor = Reenactor(generator, reenactor.directions, reenactor.ranges, reenactor.shift_scale,
                              reenactor.truncation, transformer=transformer).to(device)
        image = torch.zeros(1, 3, generator.size, generator.size, device=device)
    rows = []
    for batch in batch_sizes:
        wplus = torch.randn(1, generator.n_latent, generator.style_dim, device=device)
        source = torch.zeros(1, 15, device=device)
        driving = torch.randn(batch, 15, device=device)
        times = []
        with torch.inference_mode(), networks._autocast():
            # as reenactment runs it: the transformer's per-source part once, not per batch
            detail = reenactor.source_detail(wplus, image) if refine else None
            for attempt in range(repeats + 1):
                sync(device)
                started = time.perf_counter()
                reenactor(wplus, source, driving, source_image=image, source_detail=detail)
                sync(device)
                if attempt:  # the first call warms up kernels and caches
                    times.append(time.perf_counter() - started)
        rows.append({"batch": batch, "ms_per_batch": 1e3 * statistics.median(times),
                     "frames_per_s": batch / statistics.median(times)})
    return rows


def whole_flow(config, driver: Path, output: Path) -> dict:
    """One reenact-video run, its stages timed separately (the flow's tasks run these same functions)."""
    from tasks.reenact import prepare_driving, prepare_source, render_video

    started = time.perf_counter()
    face = prepare_source(str(SOURCE), 0, config)
    source_s = time.perf_counter() - started
    track = prepare_driving(str(driver), config)
    driving_s = time.perf_counter() - started - source_s
    render_video(face, track, output, config)
    total = time.perf_counter() - started
    frames = len(track)
    return {"frames": frames, "driving_s": driving_s, "source_s": source_s, "render_s": total - driving_s - source_s,
            "total_s": total, "frames_per_s": frames / total, "render_frames_per_s": frames / (total - driving_s - source_s)}


def tuning_speed(config, steps: int) -> dict[str, float]:
    """ms per step of tuning G on the bundled photo, on pixels alone and with LPIPS (after a 2-step warm-up)."""
    from tasks.reenact import networks_for, prepare_source

    face = prepare_source(str(SOURCE), 0, config)
    rows = {}
    for label, lpips_weight in (("L2", 0.0), ("L2 + LPIPS", 1.0)):
        for count in (2, steps):  # the first call warms up kernels and caches
            tuned = config.model_copy(update={"tune_steps": count, "tune_lpips_weight": lpips_weight})
            report = networks_for(tuned).tuned(face, tuned).tuning
        rows[label] = 1e3 * report["seconds"] / steps
    return rows


def memory_run(arguments: argparse.Namespace, precision: str, seconds: float, scratch: Path) -> dict:
    """A whole run on a `seconds`-long driver in a fresh process; its peak memory growth."""
    command = [sys.executable, __file__, "--child-memory", str(seconds), "--device", arguments.device,
               "--precision-child", precision, "--scratch", str(scratch), "--face3d", arguments.face3d]
    if arguments.weights_dir:
        command += ["--weights-dir", arguments.weights_dir]
    if arguments.memory_batch:
        command += ["--memory-batch", str(arguments.memory_batch)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {seconds} s failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_memory(arguments: argparse.Namespace) -> None:
    import torch

    from tasks.reenact import ReenactConfig, networks_for

    scratch = Path(arguments.scratch)
    driver = make_driver(scratch / f"driver-{arguments.child_memory:g}s.mp4", arguments.child_memory)
    config = ReenactConfig(weights_dir=str(weights_dir(arguments.weights_dir, scratch)), device=arguments.device,
                           precision=arguments.precision_child, face3d=arguments.face3d,
                           batch_size=arguments.memory_batch)
    networks_for(config)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if arguments.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = whole_flow(config, driver, scratch / "memory.mp4")
    result["rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    result["rss_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if arguments.device.startswith("cuda"):
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when present, else cpu)")
    parser.add_argument("--precisions", default=None, help="comma list of fp32,bf16,fp16 (default: fp32 on CPU, all three on CUDA)")
    parser.add_argument("--batch-sizes", default=None, help="G + A sweep (default: 1,2,4 on CPU; 1,8,32,64,128 on CUDA)")
    parser.add_argument("--seconds", type=float, default=None, help="driver length of the whole-flow timing (default: 4 on CPU, 40 on CUDA)")
    parser.add_argument("--memory-seconds", default="", help="comma list of driver lengths for peak memory, e.g. 10,120 (each a fresh process)")
    parser.add_argument("--memory-batch", type=int, default=None, help="batch size of the memory runs (default: the flow's)")
    parser.add_argument("--face3d", default="landmark-fit", help="Net3D of the runs (default landmark-fit; 'deca' reads the random DECA)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tune-steps", type=int, default=None, help="steps of the G-tuning timing (default: 10 on CPU, 50 on CUDA; 0 skips it)")
    parser.add_argument("--weights-dir", default=None, help="official weights to use instead of random ones")
    parser.add_argument("--scratch", default=None, help="folder for drivers, weights and outputs (default: a temporary one)")
    parser.add_argument("--child-memory", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision-child", default="fp32", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    import torch

    arguments.device = arguments.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = arguments.device.startswith("cuda")
    if arguments.child_memory is not None:
        child_memory(arguments)
        return
    scratch = Path(arguments.scratch or tempfile.mkdtemp(prefix="bench-reenact-"))
    scratch.mkdir(parents=True, exist_ok=True)
    precisions = (arguments.precisions or ("fp32,bf16,fp16" if on_gpu else "fp32")).split(",")
    batch_sizes = [int(b) for b in (arguments.batch_sizes or ("1,8,32,64,128" if on_gpu else "1,2,4")).split(",")]
    seconds = arguments.seconds or (40.0 if on_gpu else 4.0)

    from tasks.reenact import ReenactConfig

    weights = weights_dir(arguments.weights_dir, scratch)
    tune_steps = arguments.tune_steps if arguments.tune_steps is not None else (50 if on_gpu else 10)
    if tune_steps and not arguments.weights_dir:
        from tests.weights import write_metric_weights

        write_metric_weights(weights)  # LPIPS's AlexNet trunk, random: the cost of the real one
    driver = make_driver(scratch / f"driver-{seconds:g}s.mp4", seconds)
    print(f"device {arguments.device}{' (' + torch.cuda.get_device_name() + ')' if on_gpu else ''}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads; random official-layout weights; face3d "
          f"{arguments.face3d}; driver {seconds:g} s at 25 fps")
    for precision in precisions:
        config = ReenactConfig(weights_dir=str(weights), device=arguments.device, precision=precision,
                               face3d=arguments.face3d)
        sweep = generator_sweep(config, batch_sizes, arguments.repeats)
        base = sweep[0]["frames_per_s"]
        print(f"\n[{precision}] G + A alone")
        for row in sweep:
            print(f"  batch {row['batch']:4d}: {row['ms_per_batch']:9.1f} ms/batch  {row['frames_per_s']:8.1f} frames/s"
                  f"  x{row['frames_per_s'] / base:.2f} vs batch {sweep[0]['batch']}")
        refined = generator_sweep(config, batch_sizes, arguments.repeats, refine=True)
        print(f"[{precision}] G + A + Feature Transformer (32 px)")
        for row, plain in zip(refined, sweep):
            print(f"  batch {row['batch']:4d}: {row['ms_per_batch']:9.1f} ms/batch  {row['frames_per_s']:8.1f} frames/s"
                  f"  x{row['frames_per_s'] / plain['frames_per_s']:.2f} vs G + A")
        best = max(sweep, key=lambda row: row["frames_per_s"])["batch"]
        print(f"[{precision}] whole flow on the {seconds:g} s driver")
        runs = {}
        for batch in sorted({1, best}):
            run = whole_flow(config.model_copy(update={"batch_size": batch}), driver, scratch / "out.mp4")
            runs[batch] = run
            print(f"  batch {batch:4d}: driving track {run['driving_s']:.2f} s, source {run['source_s']:.2f} s, "
                  f"render+encode {run['render_s']:.2f} s -> {run['frames_per_s']:.1f} frames/s end to end, "
                  f"{run['render_frames_per_s']:.1f} frames/s rendering ({run['frames']} frames)")
        if best != 1:
            print(f"  best batch {best} vs batch 1: x{runs[best]['frames_per_s'] / runs[1]['frames_per_s']:.2f} "
                  f"end to end")
        lengths = [float(s) for s in arguments.memory_seconds.split(",") if s]
        if lengths:
            print(f"[{precision}] peak memory of whole runs (fresh processes)")
            results = {length: memory_run(arguments, precision, length, scratch) for length in lengths}
            for length, result in results.items():
                cuda = f", CUDA peak {result['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in result else ""
                print(f"  {length:6g} s ({result['frames']:5d} frames): RSS +{result['rss_growth_mib']:.0f} MiB "
                      f"during the run (peak {result['rss_peak_mib']:.0f} MiB){cuda}; "
                      f"{result['frames_per_s']:.1f} frames/s")
            short, long = results[min(lengths)], results[max(lengths)]
            print(f"  peak RSS {max(lengths):g} s vs {min(lengths):g} s: x{long['rss_peak_mib'] / short['rss_peak_mib']:.2f}")
    if tune_steps:  # tuning runs in fp32 whatever the precision: once
        tuning = tuning_speed(ReenactConfig(weights_dir=str(weights), device=arguments.device,
                                            face3d=arguments.face3d), tune_steps)
        print(f"\ntuning G on the source ({tune_steps} steps, fp32): "
              + ", ".join(f"{label} {ms:.0f} ms/step" for label, ms in tuning.items())
              + f"; LPIPS adds x{tuning['L2 + LPIPS'] / tuning['L2']:.2f}")


if __name__ == "__main__":
    main()
