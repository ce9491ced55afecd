"""`reenact`: the command line. One sub-command per flow, calling the same flow functions the deployments run."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

import tasks  # noqa: F401  (Prefect environment defaults first)
from storage.settings import DEMO_PHOTO
from tasks.encode import EncodeConfig
from tasks.evaluate import EvaluateConfig
from tasks.metrics import MetricsConfig
from tasks.preprocess import PreprocessConfig
from tasks.report import ReportConfig
from tasks.reenact import ReenactConfig
from tasks.runners import RunnerConfig

app = typer.Typer(
    help="One-shot neural face reenactment pipeline (Prefect flows over a Zarr clip store).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)  # messages stay on one line, whole paths included
_pre = PreprocessConfig.model_fields
_run = RunnerConfig.model_fields
_enc = EncodeConfig.model_fields
_ree = ReenactConfig.model_fields
_eva = EvaluateConfig.model_fields
_met = MetricsConfig.model_fields
_rep = ReportConfig.model_fields
WEIGHTS_DIR_HELP = "Weights directory (default: $REENACT_WEIGHTS_DIR, else weights/ in the project)."


@contextmanager
def user_errors():
    """Errors in what the user asked for print as one line and exit 2, without a traceback."""
    from prefect.exceptions import ParameterTypeError
    from pydantic import ValidationError

    from storage.video import VideoError

    try:
        yield
    # missing weights are FileNotFoundErrors, bad reenactment inputs ValueErrors, a refused video a VideoError
    except (ValueError, FileNotFoundError, KeyError, ValidationError, ParameterTypeError, VideoError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(code=2) from err


@app.command("preprocess-dataset")
def preprocess_dataset_command(
    input: Path = typer.Argument(..., help="A VoxCeleb-layout directory (<identity>/<video>/<clip>.mp4) or a .csv/.parquet list with a 'path' column."),
    store: Path = typer.Option(Path("outputs/dataset.zarr"), help="The Zarr clip store to create or extend."),
    fps: Optional[float] = typer.Option(None, help=_pre["fps"].description),
    detector: str = typer.Option("dlib", help=_pre["detector"].description),
    weights_dir: Optional[Path] = typer.Option(None, help=_pre["weights_dir"].description),
    crop_size: int = typer.Option(256, help=_pre["crop_size"].description),
    box_smoothing: float = typer.Option(2.0, help=_pre["box_smoothing"].description),
    detect_max_side: int = typer.Option(640, help=_pre["detect_max_side"].description),
    batch_size: int = typer.Option(32, help=_pre["batch_size"].description),
    task_runner: str = typer.Option("local", help=_run["kind"].description),
    workers: int = typer.Option(1, help=_run["workers"].description),
    dask_address: Optional[str] = typer.Option(None, help=_run["dask_address"].description),
    input_root: Optional[Path] = typer.Option(None, help="Root that every listed path must stay inside (list files; default: the list's folder)."),
    limit: Optional[int] = typer.Option(None, help="Process only the first N clips."),
) -> None:
    """Decode videos, detect and align faces, and write 256x256 crops, landmarks and boxes to the clip store.

    Re-running skips clips whose source file and settings are unchanged; a killed run leaves no half-written clip.
    """
    from flows.preprocess_dataset import preprocess_dataset

    with user_errors():
        config = PreprocessConfig(fps=fps, detector=detector, weights_dir=str(weights_dir) if weights_dir else None,
                                  crop_size=crop_size, box_smoothing=box_smoothing, detect_max_side=detect_max_side,
                                  batch_size=batch_size)
        runner = RunnerConfig(kind=task_runner, workers=workers, dask_address=dask_address)
        summary = preprocess_dataset(input=str(input), store=str(store), config=config, runner=runner,
                                     input_root=str(input_root) if input_root else None, limit=limit)
    _print_summary(summary)
    if summary.failed:
        raise typer.Exit(code=1 if summary.failed == summary.clips else 0)


@app.command("encode-dataset")
def encode_dataset_command(
    store: Path = typer.Argument(..., help="A clip store written by preprocess-dataset."),
    stages: str = typer.Option("face3d,inversion", help="Comma-separated stages: 'face3d' (3DMM parameters per frame), 'inversion' (W+ per frame)."),
    face3d: str = typer.Option("landmark-fit", help=_enc["face3d"].description),
    encoder: str = typer.Option("e4e-voxceleb256", help=_enc["encoder"].description),
    weights_dir: Optional[Path] = typer.Option(None, help=WEIGHTS_DIR_HELP),
    precision: str = typer.Option("fp32", help=_enc["precision"].description),
    batch_size: int = typer.Option(16, help=_enc["batch_size"].description),
    device: str = typer.Option("auto", help=_enc["device"].description),
    clip: Optional[list[str]] = typer.Option(None, help="Only this clip (identity/video/clip); repeat for several."),
    ranges: bool = typer.Option(True, help="Measure the [min, max] table of the face3d parameters over the store (ranges-<backend>.npy)."),
    task_runner: str = typer.Option("local", help=_run["kind"].description),
    workers: int = typer.Option(1, help=_run["workers"].description),
    dask_address: Optional[str] = typer.Option(None, help=_run["dask_address"].description),
) -> None:
    """Add 3DMM parameters (face3d/) and W+ inversions (inversion/) to every clip of a store, batched, on the GPU
    when there is one.

    Stages already written with the same settings are skipped, so a killed run resumes where it stopped; a stage
    appears in a clip whole or not at all. Without the encoder's weights, run `--stages face3d` alone.
    """
    from flows.encode_dataset import encode_dataset
    from tasks.encode import EncodeConfig

    with user_errors():
        config = EncodeConfig(stages=[part.strip() for part in stages.split(",") if part.strip()], face3d=face3d,
                              encoder=encoder, weights_dir=str(weights_dir) if weights_dir else None,
                              precision=precision, batch_size=batch_size, device=device)
        runner = RunnerConfig(kind=task_runner, workers=workers, dask_address=dask_address)
        summary = encode_dataset(store=str(store), config=config, runner=runner, clips=clip or None,
                                 measure_ranges=ranges)
    console.print(
        f"[bold]{summary.clips} clips[/]: {summary.ok} ok, {summary.skipped} skipped, {summary.failed} failed; "
        f"{summary.frames} frames in {summary.seconds:.1f} s"
    )
    console.print(f"store:    {Path(summary.store).resolve()}")
    console.print(f"manifest: {Path(summary.manifest).resolve()}")
    if summary.ranges:
        console.print(f"ranges:   {Path(summary.ranges).resolve()}")
    if summary.failed:
        raise typer.Exit(code=1 if summary.failed == summary.clips else 0)


# options the reenacting commands share, declared once
FEATURE_TRANSFORMER_OPTION = typer.Option(None, help=_ree["feature_transformer"].description)
TUNE_STEPS_OPTION = typer.Option(0, help=_ree["tune_steps"].description)
TUNE_LPIPS_WEIGHT_OPTION = typer.Option(1.0, help=_ree["tune_lpips_weight"].description)


def _reenact_config(weights: str, face3d: Optional[str], truncation: Optional[float], weights_dir: Optional[Path],
                    device: str, precision: str, batch_size: Optional[int], smoothing: float, fps: Optional[float],
                    detector: str, grid: bool, paste_back: bool, crf: int, feature_transformer: Optional[str],
                    tune_steps: int, tune_lpips_weight: float) -> ReenactConfig:
    return ReenactConfig(weights=weights, face3d=face3d, truncation=truncation,
                         weights_dir=str(weights_dir) if weights_dir else None, device=device, precision=precision,
                         batch_size=batch_size, smoothing=smoothing, fps=fps, detector=detector, grid=grid,
                         paste_back=paste_back, crf=crf, feature_transformer=feature_transformer,
                         tune_steps=tune_steps, tune_lpips_weight=tune_lpips_weight)


@app.command("reenact-video")
def reenact_video_command(
    driving: str = typer.Argument(..., help="The driving video (a file), or clip:identity/video/clip of --store."),
    source: Optional[str] = typer.Option(None, help="The face to animate: an image, a video (see --source-frame) or clip:identity/video/clip of --store. Not with --mode self."),
    source_frame: int = typer.Option(0, help="Frame of a source video (or store clip) to take the face from."),
    mode: str = typer.Option("cross", help="'cross': --source performs the driving video; 'self': the driving clip's first frame is the source (the paper's self-reenactment)."),
    output: Path = typer.Option(Path("outputs/reenacted.mp4"), "--output", "-o", help="The mp4 to write (H.264, the driving video's fps and audio)."),
    store: Optional[Path] = typer.Option(None, help="A clip store to read crops, face parameters and W+ codes from when it holds the inputs."),
    cache: bool = typer.Option(False, help="Write inputs that --store lacks into it (preprocess + encode), then read them from there."),
    weights: str = typer.Option("voxceleb256", help=_ree["weights"].description),
    face3d: Optional[str] = typer.Option(None, help=_ree["face3d"].description),
    truncation: Optional[float] = typer.Option(None, help=_ree["truncation"].description),
    weights_dir: Optional[Path] = typer.Option(None, help=WEIGHTS_DIR_HELP),
    device: str = typer.Option("auto", help=_ree["device"].description),
    precision: str = typer.Option("fp32", help=_ree["precision"].description),
    batch_size: Optional[int] = typer.Option(None, help=_ree["batch_size"].description),
    smoothing: float = typer.Option(1.0, help=_ree["smoothing"].description),
    fps: Optional[float] = typer.Option(None, help=_ree["fps"].description),
    detector: str = typer.Option("dlib", help=_ree["detector"].description),
    grid: bool = typer.Option(False, help=_ree["grid"].description),
    paste_back: bool = typer.Option(False, help=_ree["paste_back"].description),
    crf: int = typer.Option(18, help=_ree["crf"].description),
    feature_transformer: Optional[str] = FEATURE_TRANSFORMER_OPTION,
    tune_steps: int = TUNE_STEPS_OPTION,
    tune_lpips_weight: float = TUNE_LPIPS_WEIGHT_OPTION,
) -> None:
    """Make the source face perform the driving video's head pose and expression, and write it as an mp4.

    w_reenact = w_source + A(p_driving - p_source), rendered by G, frame by frame in batches (on the GPU when there
    is one). Frames where the driving face is missed keep the last good parameters; the parameters are smoothed over
    time. Nothing is left at --output when the run fails.
    """
    from flows.reenact_video import reenact_video
    from tasks.reenact import networks_for

    with user_errors():
        config = _reenact_config(weights, face3d, truncation, weights_dir, device, precision, batch_size, smoothing,
                                 fps, detector, grid, paste_back, crf, feature_transformer, tune_steps,
                                 tune_lpips_weight)
        networks_for(config)  # setup problems (unknown set, missing weights) as one line, before the flow starts
        summary = reenact_video(driving=driving, output=str(output), source=source, source_frame=source_frame,
                                mode=mode, config=config, store=str(store) if store else None, cache=cache)
    console.print(f"[bold]{summary.frames} frames[/] at {summary.fps:g} fps, {summary.width}x{summary.height}"
                  f"{', with audio' if summary.has_audio else ''}; {summary.frames_without_face} without a readable "
                  f"face; {summary.seconds:.1f} s ({summary.frames_per_second:.1f} frames/s on {summary.device})")
    console.print(f"video: {Path(summary.output).resolve()}")


@app.command("reenact-dataset")
def reenact_dataset_command(
    out: Path = typer.Argument(Path("outputs/reenacted"), help="Folder for the videos (videos/<name>.mp4), pairs.parquet and manifest.parquet."),
    pairs: Optional[Path] = typer.Option(None, help="A .csv/.parquet list of pairs: a 'driving' column, optional 'source', 'source_frame', 'mode' ('cross'/'self'), 'name'. Relative paths resolve against the list's folder."),
    store: Optional[Path] = typer.Option(None, help="The clip store that --protocol draws from (and that clip: entries name)."),
    protocol: Optional[str] = typer.Option(None, help="Instead of --pairs: 'self' (every clip of --store drives its own first frame) or 'cross' (--count random pairs of two identities)."),
    count: int = typer.Option(100, help="Pairs of the cross protocol."),
    seed: int = typer.Option(0, help="Seed of the cross protocol's draw."),
    cache: bool = typer.Option(False, help="Write inputs that --store lacks into it first."),
    limit: Optional[int] = typer.Option(None, help="Reenact only the first N pairs."),
    weights: str = typer.Option("voxceleb256", help=_ree["weights"].description),
    face3d: Optional[str] = typer.Option(None, help=_ree["face3d"].description),
    truncation: Optional[float] = typer.Option(None, help=_ree["truncation"].description),
    weights_dir: Optional[Path] = typer.Option(None, help=WEIGHTS_DIR_HELP),
    device: str = typer.Option("auto", help=_ree["device"].description),
    precision: str = typer.Option("fp32", help=_ree["precision"].description),
    batch_size: Optional[int] = typer.Option(None, help=_ree["batch_size"].description),
    smoothing: float = typer.Option(1.0, help=_ree["smoothing"].description),
    fps: Optional[float] = typer.Option(None, help=_ree["fps"].description),
    detector: str = typer.Option("dlib", help=_ree["detector"].description),
    grid: bool = typer.Option(False, help=_ree["grid"].description),
    paste_back: bool = typer.Option(False, help=_ree["paste_back"].description),
    crf: int = typer.Option(18, help=_ree["crf"].description),
    feature_transformer: Optional[str] = FEATURE_TRANSFORMER_OPTION,
    tune_steps: int = TUNE_STEPS_OPTION,
    tune_lpips_weight: float = TUNE_LPIPS_WEIGHT_OPTION,
    task_runner: str = typer.Option("local", help=_run["kind"].description),
    workers: int = typer.Option(1, help=_run["workers"].description),
    dask_address: Optional[str] = typer.Option(None, help=_run["dask_address"].description),
) -> None:
    """Reenact many (source, driving) pairs: a list file, or the paper's self / cross protocol over a store.

    Pairs already done with the same settings and inputs are skipped, so a killed run resumes; a failing pair gets a
    'failed' row in the manifest and the others go on.
    """
    from flows.reenact_dataset import reenact_dataset
    from tasks.reenact import networks_for

    with user_errors():
        config = _reenact_config(weights, face3d, truncation, weights_dir, device, precision, batch_size, smoothing,
                                 fps, detector, grid, paste_back, crf, feature_transformer, tune_steps,
                                 tune_lpips_weight)
        networks_for(config)  # setup problems as one line, before the flow starts
        runner = RunnerConfig(kind=task_runner, workers=workers, dask_address=dask_address)
        summary = reenact_dataset(out=str(out), pairs=str(pairs) if pairs else None, store=str(store) if store else None,
                                  protocol=protocol, count=count, seed=seed, config=config, runner=runner,
                                  cache=cache, limit=limit)
    console.print(f"[bold]{summary.pairs} pairs[/]: {summary.ok} ok, {summary.skipped} skipped, {summary.failed} "
                  f"failed; {summary.frames} frames in {summary.seconds:.1f} s")
    console.print(f"videos:   {(Path(summary.out) / 'videos').resolve()}")
    console.print(f"manifest: {Path(summary.manifest).resolve()}")
    if summary.failed:
        raise typer.Exit(code=1 if summary.failed == summary.pairs else 0)


@app.command("evaluate")
def evaluate_command(
    store: Path = typer.Option(..., help=_eva["store"].description),
    out: Path = typer.Option(Path("outputs/evaluation"), help="Folder for config.json, pairs/, frames.parquet, clips.parquet, distribution.parquet, linearity*.parquet, samples/ and summary.json (a rerun replaces them)."),
    protocol: Optional[list[str]] = typer.Option(None, help="'self' (each clip's first frame performs its other frames, compared with them) or 'cross' (random pairs of two identities); repeat for both (default: both)."),
    identity: Optional[list[str]] = typer.Option(None, help="An identity of the test split; repeat for several (default: every clip of the store)."),
    max_clips: int = typer.Option(50, help="Self protocol: at most this many clips of the split, a seeded choice (0: all)."),
    cross_count: int = typer.Option(50, help=_eva["cross_count"].description),
    frames_per_clip: Optional[int] = typer.Option(None, help=_eva["frames_per_clip"].description),
    seed: int = typer.Option(0, help=_eva["seed"].description),
    truth: Optional[Path] = typer.Option(None, help=_eva["truth"].description),
    fid: bool = typer.Option(True, help=_eva["fid"].description),
    linearity: bool = typer.Option(True, help=_eva["linearity"].description),
    linearity_sources: int = typer.Option(4, help=_eva["linearity_sources"].description),
    samples: int = typer.Option(4, help=_eva["samples"].description),
    weights: str = typer.Option("voxceleb256", help=_ree["weights"].description),
    face3d: Optional[str] = typer.Option(None, help=_ree["face3d"].description),
    truncation: Optional[float] = typer.Option(None, help=_ree["truncation"].description),
    embedder: str = typer.Option("auto", help=_met["identity"].description),
    weights_dir: Optional[Path] = typer.Option(None, help=WEIGHTS_DIR_HELP),
    device: str = typer.Option("auto", help=_ree["device"].description),
    precision: str = typer.Option("fp32", help=_ree["precision"].description),
    batch_size: Optional[int] = typer.Option(None, help=_ree["batch_size"].description),
    smoothing: float = typer.Option(1.0, help=_ree["smoothing"].description),
    feature_transformer: Optional[str] = FEATURE_TRANSFORMER_OPTION,
    tune_steps: int = TUNE_STEPS_OPTION,
    tune_lpips_weight: float = TUNE_LPIPS_WEIGHT_OPTION,
    task_runner: str = typer.Option("local", help=_run["kind"].description),
    workers: int = typer.Option(1, help=_run["workers"].description),
    dask_address: Optional[str] = typer.Option(None, help=_run["dask_address"].description),
) -> None:
    """Evaluate a weights set on a test split of a store: the paper's self- and cross-reenactment protocols.

    Per generated frame: CSIM (to the source, and to the driving frame), LPIPS (self: to the ground truth), APD and
    AED (the Net3D's reading of the result vs the driving frame), and with --truth the pose and expression errors
    against a synthetic world's true parameters; FID/KID per protocol; the linearity of A. Every figure names the
    network that measured it; seeds are fixed and the pair lists are saved.
    """
    from flows.evaluate import evaluate
    from tasks.evaluate import check_request, measuring_networks

    with user_errors():
        weights_path = str(weights_dir) if weights_dir else None
        config = EvaluateConfig(
            store=str(store), out=str(out), protocols=protocol or ["self", "cross"], identities=identity or None,
            max_clips=max_clips or None, cross_count=cross_count, frames_per_clip=frames_per_clip, seed=seed,
            truth=str(truth) if truth else None, fid=fid, linearity=linearity, linearity_sources=linearity_sources,
            samples=samples,
            reenact=ReenactConfig(weights=weights, face3d=face3d, truncation=truncation, weights_dir=weights_path,
                                  device=device, precision=precision, batch_size=batch_size, smoothing=smoothing,
                                  feature_transformer=feature_transformer, tune_steps=tune_steps,
                                  tune_lpips_weight=tune_lpips_weight),
            metrics=MetricsConfig(identity=embedder, weights_dir=weights_path, device=device))
        check_request(config)  # bad inputs and setup problems as one line, before the flow starts
        measuring_networks(config)
        runner = RunnerConfig(kind=task_runner, workers=workers, dask_address=dask_address)
        summary = evaluate(config=config, runner=runner)
    for line in summary.lines():
        console.print(line, highlight=False)
    if summary.pairs and all(summary.failed[p] == summary.pairs[p] for p in summary.pairs):
        raise typer.Exit(code=1)


@app.command("benchmark-report")
def benchmark_report_command(
    evaluation: Path = typer.Argument(..., help="An evaluation folder written by `reenact evaluate`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for report.html and figures/ (default: EVALUATION/report)."),
    resamples: int = typer.Option(2000, help=_rep["resamples"].description),
    seed: int = typer.Option(0, help=_rep["seed"].description),
    samples: int = typer.Option(8, help=_rep["samples_per_protocol"].description),
    published: Optional[Path] = typer.Option(None, help=_rep["published"].description),
    screenshot: bool = typer.Option(False, help=_rep["screenshot"].description),
) -> None:
    """A self-contained HTML benchmark report of an evaluation: metric tables with bootstrap confidence intervals,
    the published numbers next to this run's, distributions, linearity curves, throughput, sample grids and the
    environment (the same figures as PNG files beside it)."""
    from flows.benchmark_report import benchmark_report

    with user_errors():
        config = ReportConfig(resamples=resamples, seed=seed, samples_per_protocol=samples,
                              published=str(published) if published else None, screenshot=screenshot)
        summary = benchmark_report(evaluation=str(evaluation), out=str(out) if out else None, config=config)
    console.print(f"report:  {Path(summary.report).resolve()} ({summary.images} images, {len(summary.figures)} figures)")
    if summary.screenshot:
        console.print(f"picture: {Path(summary.screenshot).resolve()}")


@app.command()
def demo(
    out: Path = typer.Option(Path("outputs/demo"), help="Folder for the synthetic world, its store and the videos."),
    weights: str = typer.Option("demo", help="Weights set to reenact with (the bundled 'demo' set by default)."),
    photo: Path = typer.Option(DEMO_PHOTO, help="The real photo to reenact (a bundled one by default)."),
) -> None:
    """The main job on the embedded defaults: make synthetic demo data, preprocess it, and reenact a synthetic
    source and a real photo with a synthetic driving clip (local Prefect, local Zarr, the bundled demo weights)."""
    from flows.demo import demo as demo_flow

    with user_errors():
        summary = demo_flow(out=str(out), weights=weights, photo=str(photo))
    console.print(f"[bold]{len(summary.videos)} videos[/], {summary.frames} frames in {summary.seconds:.1f} s")
    console.print(f"world:  {Path(summary.world).resolve()} (true parameters: {Path(summary.truth).name})")
    console.print(f"store:  {Path(summary.store).resolve()}")
    for label, video in summary.videos.items():
        console.print(f"video:  {Path(video).resolve()}  ({label}; source | driving | result)")


@app.command("make-synthetic-dataset")
def make_synthetic_dataset_command(
    out: Path = typer.Argument(Path("outputs/synthetic"), help="Directory to write the world to (VoxCeleb layout)."),
    identities: int = typer.Option(4, help="Number of synthetic people."),
    videos: int = typer.Option(2, help="Videos per person."),
    clips: int = typer.Option(2, help="Clips per video."),
    min_seconds: float = typer.Option(2.0, help="Shortest clip, in seconds."),
    max_seconds: float = typer.Option(8.0, help="Longest clip, in seconds."),
    seed: int = typer.Option(0, help="Seed of the whole world: identities, clip lengths and motion."),
    crf: int = typer.Option(20, help="x264 quality (lower is better, larger files)."),
    task_runner: str = typer.Option("local", help=_run["kind"].description),
    workers: int = typer.Option(1, help=_run["workers"].description),
    dask_address: Optional[str] = typer.Option(None, help=_run["dask_address"].description),
) -> None:
    """Render a synthetic VoxCeleb-style dataset of parametric heads whose pose and expression are known.

    Writes <out>/<identity>/<video>/<clip>.mp4 (256x256 H.264, 25 fps, quiet audio) and <out>/truth.parquet: one
    row per frame with yaw, pitch, roll (degrees), jaw (radians) and the 11 expression coefficients. Re-running
    skips finished clips; feed the directory to preprocess-dataset like real footage.
    """
    from flows.make_synthetic_dataset import make_synthetic_dataset
    from tasks.synthesize import SynthConfig

    with user_errors():
        config = SynthConfig(identities=identities, videos_per_identity=videos, clips_per_video=clips,
                             min_seconds=min_seconds, max_seconds=max_seconds, seed=seed, crf=crf)
        runner = RunnerConfig(kind=task_runner, workers=workers, dask_address=dask_address)
        summary = make_synthetic_dataset(out=str(out), config=config, runner=runner)
    console.print(f"[bold]{summary.clips} clips[/]: {summary.rendered} rendered, {summary.skipped} skipped; "
                  f"{summary.frames} frames in {summary.seconds:.1f} s")
    console.print(f"videos: {Path(summary.out).resolve()}")
    console.print(f"truth:  {Path(summary.truth).resolve()}")


@app.command("store-info")
def store_info(store: Path = typer.Argument(..., help="A clip store written by preprocess-dataset.")) -> None:
    """Show the manifest of a clip store: one line per clip with its status, frames and error."""
    from storage.manifest import read_manifest
    from storage.store import ClipStore

    with user_errors():
        clip_store = ClipStore.open(store, create=False)
    manifest = read_manifest(clip_store.manifest_path)
    table = Table("clip", "status", "frames", "fps", "faces", "seconds", "error")
    for row in manifest.to_dict("records"):
        table.add_row(f"{row['identity']}/{row['video']}/{row['clip']}", row["status"], _fmt(row.get("frames")),
                      _fmt(row.get("fps")), _fmt(row.get("faces_max")), _fmt(row.get("seconds_total")),
                      row.get("error") or "")
    console.print(table)
    console.print(f"{len(clip_store.clips())} clips published in {clip_store.root}")


def _training_command(name: str, flow_path: str, config_path: str, example: str, doc: str) -> None:
    """Register `reenact <name> [key=value ...] --config FILE --processes N --show-config` for a training flow."""

    def command(
        overrides: Optional[list[str]] = typer.Argument(None, help=f"key=value settings over the config file, e.g. {example} (all fields: --show-config)."),
        config: Optional[Path] = typer.Option(None, "--config", help="A YAML or JSON file of settings."),
        processes: int = typer.Option(1, help="Processes on this machine, one per GPU (torchrun; gloo on CPUs)."),
        show_config: bool = typer.Option(False, help="Print the resolved settings and exit."),
    ) -> None:
        import importlib

        from training.common.config import config_text, load_config

        with user_errors():
            module, _, attribute = config_path.partition(":")
            settings = load_config(getattr(importlib.import_module(module), attribute), config, overrides or [])
            if show_config:
                console.print(config_text(settings))
                return
            module, _, attribute = flow_path.partition(":")
            summary = getattr(importlib.import_module(module), attribute)(config=settings, processes=processes)
        for line in summary.lines():
            console.print(line)

    command.__doc__ = doc
    app.command(name)(command)


_training_command(
    "train-generator", "flows.train_generator:train_generator", "training.generator:GeneratorTrainingConfig",
    "store=outputs/synthetic.zarr size=64 steps=2000 augment=ada",
    "Train or fine-tune the StyleGAN2 generator on a clip store's crops (resumes from the latest checkpoint).")
_training_command(
    "train-encoder", "flows.train_encoder:train_encoder", "training.encoder:EncoderTrainingConfig",
    "generator=outputs/train-generator/generator.safetensors channel_max=64",
    "Train an e4e encoder that inverts a generator (registry name or file) on a clip store's crops.")
_training_command(
    "train-directions", "flows.train_directions:train_directions", "training.directions:DirectionsTrainingConfig",
    "generator=outputs/train-generator/generator.safetensors synthetic_steps=2000 real_steps=0 paired_steps=1000",
    "Train the direction matrix A (G and the Net3D frozen) in the paper's synthetic, real and paired phases.")
_training_command(
    "train-feature-transformer", "flows.train_feature_transformer:train_feature_transformer",
    "training.feature_transformer:FeatureTransformerTrainingConfig",
    "generator=runs/g/generator.safetensors directions=runs/a/directions.safetensors steps=5000",
    "Train the Feature Transformer (G, the codes and A frozen) on two frames of one clip of an encoded store.")



@app.command("train-demo-weights")
def train_demo_weights_command(
    work: Path = typer.Option(Path("outputs/demo-weights"), help="Folder for the worlds, stores, runs and weights."),
    install: bool = typer.Option(False, help="Copy the trained set and its provenance into models/data/demo."),
    configs: str = typer.Option("cpu", help="Config set: 'cpu' (training/configs/demo-<stage>.yaml, the bundled set's) or 'gpu' (demo-gpu-<stage>.yaml: G at 128 px, long runs)."),
    world: str = typer.Option("video", help="'video': the world as mp4s, preprocessed with dlib like real data; 'direct': rendered straight into the store with its true landmarks."),
) -> None:
    """Reproduce the bundled demo set: synthetic world, preprocess, train G, the encoder, A and the Feature
    Transformer with the configs in training/configs/demo-*.yaml, then measure them on held-out synthetic people
    (resumes what it finished). Without Prefect, stage by stage (e.g. on a GPU machine): python -m
    training.demo_recipe --help."""
    from flows.train_demo_weights import train_demo_weights

    with user_errors():
        summary = train_demo_weights(work=str(work), install=install, configs=configs, world=world)
    console.print(f"weights:    {Path(summary.weights_dir).resolve()}")
    console.print(f"provenance: {Path(summary.provenance).resolve()}")
    if summary.installed:
        console.print(f"installed:  {summary.installed}")
    console.print("held out:   " + ", ".join(f"{key} {_fmt(value)}" for key, value in summary.heldout.items()))

weights_app = typer.Typer(help="The weights directory: what is present, what is missing, conversions.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("list")
def weights_list(
    weights_dir: Optional[Path] = typer.Option(None, help=WEIGHTS_DIR_HELP),
    weights_set: Optional[str] = typer.Option(None, "--set", help="Only the files of one set: 'voxceleb256' (official) or 'demo'."),
) -> None:
    """List the known weight files: which are present, which are missing, and where each one comes from."""
    from storage.weights import WeightsRegistry, format_status

    with user_errors():
        registry = WeightsRegistry(weights_dir)
        rows = registry.status(weights_set)
    console.print(f"weights directory: {registry.root}")
    console.print(format_status(rows), highlight=False)


@weights_app.command("flame-to-npz")
def flame_to_npz(
    pkl: Path = typer.Argument(..., help="FLAME's generic_model.pkl."),
    npz: Path = typer.Argument(..., help="Where to write the pickle-free .npz."),
    landmark_embedding: Optional[Path] = typer.Option(None, help="DECA's landmark_embedding.npy (default: beside the .pkl)."),
) -> None:
    """Convert FLAME's pickle (and DECA's landmark embedding) to one .npz, read without any pickled code."""
    from models.flame import convert_flame_pkl_to_npz

    with user_errors():
        out = convert_flame_pkl_to_npz(pkl, npz, landmark_embedding)
    console.print(f"wrote {out}")


def _print_summary(summary) -> None:
    console.print(
        f"[bold]{summary.clips} clips[/]: {summary.ok} ok, {summary.skipped} skipped, {summary.failed} failed; "
        f"{summary.frames} frames in {summary.seconds:.1f} s"
    )
    console.print(f"store:    {Path(summary.store).resolve()}")
    console.print(f"manifest: {Path(summary.manifest).resolve()}")


def _fmt(value) -> str:
    if value is None or value != value:  # None or NaN
        return ""
    return f"{value:.2f}" if isinstance(value, float) and not value.is_integer() else str(int(value) if isinstance(value, float) else value)


if __name__ == "__main__":
    app()
