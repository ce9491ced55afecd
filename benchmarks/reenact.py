"""Speed and memory of reenact-video: the whole flow (decode -> detect -> 3DMM -> A -> G -> encode) and G + A alone.

    python benchmarks/reenact.py                              # CPU (and CUDA when present), random official weights
    python benchmarks/reenact.py --device cuda --batch-sizes 1,16,64,128 --precisions fp32,bf16,fp16
    python benchmarks/reenact.py --memory-seconds 10,120      # peak memory for a 2-minute driver, in subprocesses
    python benchmarks/reenact.py --demo-flow                  # the demo set on a 720p driver: streamed vs sequential
    python benchmarks/reenact.py --demo-flow --memory-only --memory-seconds 10,120
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

With `--demo-flow`, instead: the bundled `demo` set (its real networks) reenacting the bundled photo with a 720p
driver (a demo clip enlarged to 720 px and set on a 1280x720 frame, `--seconds` long, `--grid` output as the README's
example), three ways in the same process, interleaved, `--repeats` times (medians):
  * streamed: `tasks.reenact.reenact`, the flow's path (one decode, stages overlapped in threads, faces followed
    between key frames);
  * streamed, one thread: the same stages one after another (what the overlap gains);
  * sequential: the path before streaming, rebuilt here from the same parts: decode and detect every frame, decode
    again to crop and read the Net3D, smooth, decode a third time to crop, draw, compose and encode, one step after
    another;
with per-stage seconds, frames/s end to end, the time to the first written frame, and the ratios. Then the driving
analysis alone (decode -> faces -> crops -> Net3D -> smoothed parameters): streamed (`prepare_driving`) vs
sequential. Then the tracking tolerance: mean distance, in pixels of the 256 px crop, between the landmarks of the
followed face and those of per-frame detection, on every bundled clip and on synthetic clips (whose true landmarks
are known, so both are also measured against the truth). `--memory-seconds` then runs the streamed flow in fresh
processes on 720p drivers of those lengths.
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


def make_driver(path: Path, seconds: float, fps: float = 25.0, height: int | None = None) -> Path:
    """The demo clip played forwards and backwards until `seconds` long, streamed to an mp4 with quiet audio; with
    `height`, each frame enlarged to that height and set on a 16:9 frame (its sides: a blurred, widened copy)."""
    import numpy as np

    from storage.video import VideoReader, VideoWriter, write_quiet_audio

    if path.exists():
        return path
    clip = np.concatenate(list(VideoReader(DEMO_CLIP).batches(64)))
    if height:
        clip = np.stack([_widescreen(frame, height) for frame in clip])
    cycle = np.concatenate([clip, clip[::-1]])
    frames = int(round(seconds * fps))
    audio = write_quiet_audio(path.with_suffix(".wav"), frames / fps)
    with VideoWriter(path, fps, (clip.shape[2], clip.shape[1]), audio_from=audio,
                     audio_seconds=frames / fps) as writer:
        for start in range(0, frames, len(cycle)):
            writer.write(cycle[: min(len(cycle), frames - start)])
    audio.unlink()
    return path


def _widescreen(frame, height: int):
    """A square frame enlarged (bicubic) to `height` and centred on a 16:9 frame filled by its blurred copy."""
    import cv2

    width = height * 16 // 9 // 2 * 2
    big = cv2.resize(frame, (height, height), interpolation=cv2.INTER_CUBIC)
    backdrop = cv2.resize(cv2.GaussianBlur(frame, (0, 0), 8), (width, width), interpolation=cv2.INTER_LINEAR)
    top = (width - height) // 2
    canvas = backdrop[top:top + height].copy()
    canvas[:, (width - height) // 2:(width + height) // 2] = big
    return canvas


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
    from models.precision import autocast
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
        with torch.inference_mode(), autocast(config.precision, networks.device):
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
    """One reenact-video run as the flow's tasks run it: the source, then the driving video streamed through every
    stage into the encoder."""
    from tasks.reenact import networks_for, prepare_source, reenact

    started = time.perf_counter()
    networks = networks_for(config)
    face = prepare_source(str(SOURCE), 0, config, networks)
    source_s = time.perf_counter() - started
    summary = reenact(str(driver), face, output, config, networks)
    total = time.perf_counter() - started
    frames = summary.frames
    return {"frames": frames, "source_s": source_s, "stream_s": summary.seconds_render, "total_s": total,
            "frames_per_s": frames / total, "stream_frames_per_s": frames / summary.seconds_render,
            "first_frame_s": source_s + summary.seconds_to_first_frame, "stages": summary.stage_seconds}


def tuning_speed(config, steps: int) -> dict[str, float]:
    """ms per step of tuning G on the bundled photo, on pixels alone and with LPIPS (after a 2-step warm-up)."""
    from tasks.reenact import networks_for, prepare_source

    face = prepare_source(str(SOURCE), 0, config, networks_for(config))
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
    if arguments.demo_flow:
        command += ["--demo-flow", "--height", str(arguments.height)]
    # the driver is made here: making it in the child would set that process's peak (ru_maxrss only rises)
    make_driver(_driver_path(arguments, scratch, seconds), seconds, height=arguments.height if arguments.demo_flow else None)
    if arguments.weights_dir:
        command += ["--weights-dir", arguments.weights_dir]
    if arguments.memory_batch:
        command += ["--memory-batch", str(arguments.memory_batch)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {seconds} s failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _driver_path(arguments: argparse.Namespace, scratch: Path, seconds: float) -> Path:
    return scratch / (f"driver-{seconds:g}s-{arguments.height}p.mp4" if arguments.demo_flow else f"driver-{seconds:g}s.mp4")


def child_memory(arguments: argparse.Namespace) -> None:
    import torch

    from tasks.reenact import ReenactConfig, networks_for

    scratch = Path(arguments.scratch)
    driver = _driver_path(arguments, scratch, arguments.child_memory)
    if arguments.demo_flow:
        config = demo_config(arguments.device)
    else:
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


# --- the demo set on a 720p driver: streamed vs sequential -------------------------------------------------------------

def demo_config(device: str):
    from tasks.reenact import ReenactConfig

    return ReenactConfig(weights="demo", grid=True, device=device)


def sequential_flow(config, face, driver: Path, output: Path) -> dict:
    """The path before streaming, from the same parts: analysis (decode, detect every frame, smooth the boxes;
    decode again, crop, Net3D in batches; fill and smooth), then the render (decode a third time, crop, G, compose,
    encode), each step after the other in one thread. Returns its seconds per step and to the first frame."""
    import numpy as np

    from models.detect import align
    from storage.video import VideoReader, VideoWriter, probe
    from tasks.reenact import networks_for

    networks = networks_for(config)
    started = time.perf_counter()
    params, boxes, analysis_s = sequential_analysis(config, driver)
    reader, info = VideoReader(driver), probe(driver)
    size, first_frame_s = networks.batch_size(config), None
    seconds = {"decode + crop": 0.0, "generate": 0.0, "compose": 0.0, "encode": 0.0}
    with VideoWriter(output, reader.fps, (3 * 256, 256), audio_from=driver if info.has_audio else None,
                     crf=config.crf, audio_seconds=len(reader) / reader.fps) as writer:
        batches = reader.batches(size)
        for start in range(0, len(reader), size):
            clock = time.perf_counter()
            frames = next(batches)
            stop = start + len(frames)
            crops = align.crop_faces(frames, boxes[start:stop], 256)
            seconds["decode + crop"] += time.perf_counter() - clock
            clock = time.perf_counter()
            result = networks.generate(face, params[start:stop])
            seconds["generate"] += time.perf_counter() - clock
            clock = time.perf_counter()
            picture = np.concatenate([np.broadcast_to(face.crop, result.shape), crops, result], axis=2)
            seconds["compose"] += time.perf_counter() - clock
            clock = time.perf_counter()
            writer.write(picture)
            seconds["encode"] += time.perf_counter() - clock
            if first_frame_s is None:
                first_frame_s = time.perf_counter() - started
    total = time.perf_counter() - started
    return {"frames": len(reader), "total_s": total, "first_frame_s": first_frame_s,
            "stages": {"driving analysis": analysis_s, **seconds}}


def sequential_analysis(config, driver: Path):
    """The driving analysis before streaming: parameters [T, 15], boxes [T, 4] and its seconds."""
    import numpy as np

    from models.detect import align
    from models.temporal import gaussian_smooth, last_true
    from storage.video import VideoReader, probe
    from tasks.driving import ANALYSIS_BATCH
    from tasks.preprocess import analyse_faces, decode_batch_size
    from tasks.reenact import networks_for

    networks = networks_for(config)
    started = time.perf_counter()
    reader = VideoReader(driver)
    landmarks, boxes, has_face, _, _ = analyse_faces(reader, decode_batch_size(probe(driver), ANALYSIS_BATCH),
                                                     config.preprocess_config())
    crop_landmarks = align.landmarks_to_crop(landmarks, boxes, 256)
    raw, found = [], []
    for start, frames in zip(range(0, len(reader), ANALYSIS_BATCH), reader.batches(ANALYSIS_BATCH)):
        stop = start + len(frames)
        values, ok = networks.estimate(align.crop_faces(frames, boxes[start:stop], 256), crop_landmarks[start:stop])
        raw.append(values)
        found.append(ok)
    read = has_face & np.concatenate(found)
    params = gaussian_smooth(np.concatenate(raw)[last_true(read)], config.smoothing).astype(np.float32)
    return params, boxes, time.perf_counter() - started


def streamed_analysis(config, driver: Path) -> tuple[object, float]:
    from tasks.reenact import networks_for, prepare_driving

    started = time.perf_counter()
    track = prepare_driving(str(driver), config, networks_for(config))
    return track, time.perf_counter() - started


def demo_flow(arguments: argparse.Namespace, scratch: Path) -> None:
    import numpy as np
    import torch

    from tasks.reenact import networks_for, prepare_source, reenact

    config = demo_config(arguments.device)
    seconds = arguments.seconds or 4.0
    driver = make_driver(scratch / f"driver-{seconds:g}s-{arguments.height}p.mp4", seconds, height=arguments.height)
    networks = networks_for(config)
    face = prepare_source(str(SOURCE), 0, config, networks)
    print(f"device {arguments.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; the demo set "
          f"({networks.encode_config.face3d}, feature transformer {networks.feature_transformer}); driver "
          f"{seconds:g} s at 25 fps, {_frame_size(driver)}, output --grid; detector dlib, detect every "
          f"{config.detect_every} frames; {arguments.repeats} interleaved repeats, medians")
    reenact(str(driver), face, scratch / "warm.mp4", config, networks)  # warm-up: kernels, caches, the detector's models

    def streamed(threaded: bool) -> dict:
        summary = reenact(str(driver), face, scratch / "streamed.mp4", config, networks, threaded=threaded)
        return {"frames": summary.frames, "total_s": summary.seconds_render,
                "first_frame_s": summary.seconds_to_first_frame, "stages": summary.stage_seconds}

    ways = {"streamed": lambda: streamed(True), "streamed, one thread": lambda: streamed(False),
            "sequential": lambda: sequential_flow(config, face, driver, scratch / "sequential.mp4")}
    ways = {name: _in_thread(way) for name, way in ways.items()}
    runs: dict[str, list[dict]] = {name: [] for name in ways}
    analysis: dict[str, list[float]] = {"streamed": [], "sequential": []}
    for repeat in range(arguments.repeats):
        order = list(ways) if repeat % 2 == 0 else list(ways)[::-1]  # interleaved, alternating who goes first
        for name in order:
            runs[name].append(ways[name]())
        for name in (["streamed", "sequential"] if repeat % 2 == 0 else ["sequential", "streamed"]):
            analysis[name].append(_in_thread(lambda: streamed_analysis(config, driver)[1] if name == "streamed"
                                             else sequential_analysis(config, driver)[2])())
    frames = runs["streamed"][0]["frames"]
    median = {name: _median_run(values) for name, values in runs.items()}
    base = median["sequential"]
    print(f"\nwhole flow, {frames} frames (seconds per stage: each stage's own work; streamed stages overlap)")
    print(f"  {'path':<22} {'seconds':>8} {'frames/s':>9} {'first frame':>12} {'x vs sequential':>16}  stages")
    for name, run in median.items():
        stages = ", ".join(f"{stage} {value:.2f}" for stage, value in run["stages"].items())
        print(f"  {name:<22} {run['total_s']:8.2f} {frames / run['total_s']:9.2f} {run['first_frame_s']:11.2f}s "
              f"{base['total_s'] / run['total_s']:15.2f}x  {stages}")
    first = {name: np.median([run["first_frame_s"] for run in values]) for name, values in runs.items()}
    print(f"  first-frame latency: streamed {first['streamed']:.2f} s vs sequential {first['sequential']:.2f} s "
          f"(x{first['sequential'] / first['streamed']:.1f} sooner)")
    a_new, a_old = np.median(analysis["streamed"]), np.median(analysis["sequential"])
    print(f"\ndriving analysis alone (decode -> faces -> crops -> Net3D -> smoothed parameters), {frames} frames: "
          f"streamed {a_new:.2f} s ({frames / a_new:.1f} frames/s) vs sequential {a_old:.2f} s "
          f"({frames / a_old:.1f} frames/s): x{a_old / a_new:.2f}")
    tracking_tolerance(config, driver)


def _in_thread(work):
    """`work` run in a fresh thread, as the streamed stages run: torch's OpenMP threads behave differently in the
    main thread, and on a machine shared with other jobs the main thread's spin-waiting made G 10-25 times slower
    there (640 vs 24 ms a demo frame, measured), which would flatter whatever runs G off the main thread."""
    import threading

    def run():
        result = {}

        def target():
            try:
                result["value"] = work()
            except BaseException as err:  # noqa: BLE001 (re-raised in the caller)
                result["error"] = err

        thread = threading.Thread(target=target, name="benchmark")
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]

    return run


def _median_run(runs: list[dict]) -> dict:
    """The run with the median total time (its stages are reported as they were)."""
    return sorted(runs, key=lambda run: run["total_s"])[len(runs) // 2]


def _frame_size(path: Path) -> str:
    from storage.video import probe

    info = probe(path)
    return f"{info.width}x{info.height}"


def tracking_tolerance(config, driver: Path) -> None:
    """Followed vs per-frame-detected landmarks (and both vs the truth on synthetic clips), crop pixels."""
    import numpy as np

    from models.detect import align
    from models.detect.track import FaceTracker
    from storage.video import VideoReader
    from tasks.preprocess import detector_for
    from tests.synthetic_clips import Scene, synthetic_clip

    detector = detector_for(config.preprocess_config())
    clips = [(path.relative_to(ROOT).as_posix(), np.concatenate(list(VideoReader(path).batches(64))), None)
             for path in sorted((ROOT / "data" / "demo" / "voxceleb").glob("*/*/*.mp4"))]
    clips.append((f"{driver.name} (the 720p driver)", np.concatenate(list(VideoReader(driver).batches(32)))[:100], None))
    synthetic = [("synthetic, 110 px face, 640x360", Scene(2, 7, 110, (0.35, 0.5), (0.3, 0.05)), (360, 640), 75),
                 ("synthetic, 180 px face, 1280x720", Scene(4, 11, 180, (0.6, 0.5), (-0.2, 0.0)), (720, 1280), 75),
                 ("synthetic, 50 px face, 1280x720", Scene(3, 5, 50, (0.3, 0.4), (0.1, 0.05)), (720, 1280), 30)]
    for name, scene, size, count in synthetic:
        frames, truth = synthetic_clip([(scene, count)], size)
        clips.append((name, frames, truth))
    print(f"\ntracking tolerance: the followed face (detect every {config.detect_every} frames) vs per-frame detection;"
          " mean landmark distance in pixels of the 256 px crop (mean over frames, and the worst frame)")
    print(f"  {'clip':<52} {'frames':>6} {'followed vs detected':>21} {'detected vs truth':>18} {'followed vs truth':>18}"
          f" {'detector ran':>13}")
    for name, frames, truth in clips:
        tracker = FaceTracker(detector, config.detect_every)
        followed = [tracker(frame).landmarks for frame in frames]
        # per-frame detection at the scale the face was found at (finer than the working one for small faces)
        chosen, _ = align.select_faces(detector.detect(frames, tracker.scale))
        detected = [None if face is None else face.landmarks for face in chosen]
        pairs = [(d, f) for d, f in zip(detected, followed) if d is not None and f is not None]
        versus = [_crop_distance(f, d) for d, f in pairs]
        row = f"  {name:<52} {len(frames):6d} {np.mean(versus):12.2f} (max {np.max(versus):4.1f})"
        if truth is not None:
            to_truth = [[_crop_distance(points, true) for points, true in zip(found, truth) if points is not None]
                        for found in (detected, followed)]
            row += f" {np.mean(to_truth[0]):18.2f} {np.mean(to_truth[1]):18.2f}"
        else:
            row += f" {'':>18} {'':>18}"
        print(row + f" {sum(tracker.detections.values()):6d} frames at scale {tracker.scale:.3g}"
              + ("" if len(pairs) == len(frames) else f" ({len(frames) - len(pairs)} without a face in one of them)"))


def _crop_distance(landmarks, reference) -> float:
    """Mean distance between two sets of landmarks in pixels of the official 256 px crop of `reference`."""
    import numpy as np

    from models.detect import align

    box = align.crop_box(reference)[None]
    return float(np.linalg.norm(align.landmarks_to_crop(landmarks[None], box)[0]
                                - align.landmarks_to_crop(reference[None], box)[0], axis=1).mean())


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
    parser.add_argument("--demo-flow", action="store_true", help="the demo set on a 720p driver: streamed vs sequential, analysis, tracking tolerance (and --memory-seconds)")
    parser.add_argument("--height", type=int, default=720, help="driver height of --demo-flow (16:9 frames)")
    parser.add_argument("--memory-only", action="store_true", help="with --demo-flow: only the --memory-seconds runs")
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
    if arguments.demo_flow:
        if not arguments.memory_only:
            demo_flow(arguments, scratch)
        lengths = [float(s) for s in arguments.memory_seconds.split(",") if s]
        if lengths:
            print(f"\npeak memory of the streamed flow, fresh processes, {arguments.height}p drivers")
            results = {length: memory_run(arguments, "fp32", length, scratch) for length in lengths}
            for length, result in results.items():
                print(f"  {length:6g} s ({result['frames']:5d} frames): peak RSS {result['rss_peak_mib']:.0f} MiB "
                      f"(+{result['rss_growth_mib']:.0f} MiB during the run); {result['frames_per_s']:.1f} frames/s")
            short, long = results[min(lengths)], results[max(lengths)]
            print(f"  peak RSS {max(lengths):g} s vs {min(lengths):g} s: x{long['rss_peak_mib'] / short['rss_peak_mib']:.2f}")
        return
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
            slowest = max(run["stages"], key=run["stages"].get)
            print(f"  batch {batch:4d}: source {run['source_s']:.2f} s, driving video streamed {run['stream_s']:.2f} s "
                  f"(slowest stage: {slowest}, {run['stages'][slowest]:.2f} s) -> {run['frames_per_s']:.1f} frames/s "
                  f"end to end, first frame after {run['first_frame_s']:.2f} s ({run['frames']} frames)")
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
