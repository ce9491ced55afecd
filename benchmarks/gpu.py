"""GPU throughput of the project's own code, on random weights in the official 256 px layout (no files needed).

    python benchmarks/gpu.py --out outputs/gpu.json                 # a CUDA machine: every section, ~8 minutes
    python benchmarks/gpu.py --smoke --out outputs/gpu-smoke.json  # anywhere: tiny networks, every code path
    python benchmarks/gpu.py --sections inference --batches 1,128   # one section
    python benchmarks/gpu.py --requirements                         # the wheels it needs beyond torch (gpu_wheels.sh)

It imports torch, numpy and this repository's `models/` and `training/` only (no Prefect, no PyAV, no weights,
no data), so one copy of the repository runs it on a bare CUDA machine; the training sections also need the
small wheels that `scripts/gpu_wheels.sh` downloads (pydantic, zarr and friends).

Sections, in the order they run (each measurement is written to --out as soon as it is taken, and a section
that would start after --budget seconds is skipped and says so):
  inference    G + A (`models.reenact.Reenactor`, truncation 0.7) frames/s per variant and batch, with the ratio to
               eager fp32 at the same batch and the variant's images against eager fp32 on --codes fixed codes
               (one source, that many driving rows): mean absolute difference and PSNR (range [-1, 1]).
               Variants: fp32 eager (the reference), bf16 autocast (what --precision bf16 did before), bf16 /
               fp16 networks (weights and activations cast), with G's fast ops (`Generator.use_fast_ops`: the
               up-sampling blur as its own pass, "folded" into the convolution, or as shifted slices: "taps"), in
               NHWC memory.
  transformer  G + A + the Feature Transformer (32 px, per-source detail computed once) vs G + A, fp32 and bf16.
  tune         one step of tuning G on a source (training/tune_generator.py, pixels only), ms, G alone and with
               the transformer on top.
  train        images/s of train-generator, train-encoder, train-directions (synthetic phase, synth-regressor
               Net3D) and train-feature-transformer at --train-sizes, per --train-precisions: the real loop
               (`training.common.loop.train`, no checkpoints) on a small synthetic store made here, timed over
               the second half of --train-steps; with the share of time the loop waited for data.
  profile      torch.profiler of --profile-steps training steps of --profile-stages at the smallest train size
               (bf16 on a GPU): host reads of tensor values and copies each way per step, the device's busy share
               of the step, and the top operators (a text file beside --out per stage).
  compile      torch.compile of the bf16 fast path (`Reenactor.compiled`), with CUDA graphs on a GPU, at
               --compile-batches: frames/s, ratio and the images' MAD / PSNR as above (last: compiling is slow).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.directions import DirectionMatrix, ParamRanges  # noqa: E402
from models.feature_transformer import FeatureTransformer  # noqa: E402
from models.precision import dtype_of  # noqa: E402
from models.reenact import Reenactor, RenderPath  # noqa: E402
from models.stylegan2 import Generator  # noqa: E402

SECTIONS = ("inference", "transformer", "tune", "train", "profile", "compile")  # the order they run in
STAGES = ("generator", "encoder", "directions", "feature_transformer")
# packages of the machine's torch installation: never downloaded by scripts/gpu_wheels.sh
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "triton", "numpy", "pillow", "sympy", "mpmath", "networkx",
                "jinja2", "markupsafe", "fsspec", "filelock", "setuptools"}


# --------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Scale:
    """The networks' sizes: the official layout, or tiny ones for --smoke."""

    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    channel_max: int = 512
    encoder_layers: int = 50
    encoder_channel_max: int = 512
    transformer_resolution: int = 32
    mean_samples: int = 4096

    def generator(self, size: int | None = None) -> dict:
        return {"size": size or self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": 1, "channel_max": self.channel_max}


OFFICIAL = Scale()
SMOKE = Scale(size=32, style_dim=32, n_mlp=2, channel_max=32, encoder_layers=18, encoder_channel_max=16,
              transformer_resolution=16, mean_samples=64)


@dataclass(frozen=True)
class Variant:
    """One way of running G + A."""

    name: str
    path: RenderPath = RenderPath()
    autocast: str | None = None  # autocast around fp32 networks (what --precision did before the cast paths)
    compile: bool = False
    cuda_graphs: bool = False


BASELINE = Variant("fp32 eager")
EAGER_VARIANTS = (
    BASELINE,
    Variant("fp32 fast folded", RenderPath(fast_ops=True, fir="folded")),
    Variant("bf16 autocast (before)", autocast="bf16"),
    Variant("bf16 cast", RenderPath("bf16")),
    Variant("bf16 fast NHWC", RenderPath("bf16", fast_ops=True, channels_last=True)),
    Variant("bf16 fast folded", RenderPath("bf16", fast_ops=True, fir="folded")),
    Variant("bf16 fast folded NHWC", RenderPath("bf16", fast_ops=True, channels_last=True, fir="folded")),
    Variant("bf16 fast taps NHWC", RenderPath("bf16", fast_ops=True, channels_last=True, fir="taps")),
    Variant("fp16 fast NHWC", RenderPath("fp16", fast_ops=True, channels_last=True)),
)
FAST_BF16 = RenderPath("bf16", fast_ops=True, channels_last=True)  # RenderPath.for_device("bf16", "cuda")
FOLDED_BF16 = RenderPath("bf16", fast_ops=True, channels_last=True, fir="folded")
TAPS_BF16 = RenderPath("bf16", fast_ops=True, channels_last=True, fir="taps")  # what the compiler fuses best
COMPILED_VARIANTS = (  # the likeliest fastest first: compiling takes a minute or more each
    Variant("bf16 fast taps NHWC compiled + CUDA graphs", TAPS_BF16, compile=True, cuda_graphs=True),
    Variant("bf16 fast folded NHWC compiled", FOLDED_BF16, compile=True),
    Variant("bf16 fast taps NHWC compiled", TAPS_BF16, compile=True),
)
# images per step of each stage at 128 / 256 px (smoke: the smaller for every size)
TRAIN_BATCHES = {"generator": (64, 32), "encoder": (32, 16), "directions": (24, 12), "feature_transformer": (32, 16)}


# --------------------------------------------------------------------------------------------- the record

class Record:
    """The results so far: printed as they come, written whole to --out after every measurement."""

    def __init__(self, out: Path | None, budget: float):
        self.out, self.budget, self.started = out, budget, time.perf_counter()
        self.data: dict = {"environment": environment(), "sections": {}, "skipped": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def over_budget(self, what: str) -> bool:
        if self.elapsed() < self.budget:
            return False
        self.data["skipped"].append(f"{what}: not started, {self.elapsed():.0f} s > budget {self.budget:.0f} s")
        print(f"  skipped {what}: over the {self.budget:.0f} s budget", flush=True)
        self.save()
        return True

    def add(self, section: str, row: dict) -> None:
        self.data["sections"].setdefault(section, []).append(row)
        print("  " + json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_name(self.out.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2) + "\n")
        partial.replace(self.out)


def environment() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cuda": torch.version.cuda, "device": "cpu"}
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def guarded(record: Record, section: str, what: dict, measure: Callable[[], dict]) -> None:
    """Run one measurement; an error becomes its row (the benchmark goes on)."""
    try:
        row = measure()
    except Exception as error:  # noqa: BLE001 - a failed measurement is a result to report, not a crash
        traceback.print_exc()
        row = {"error": f"{type(error).__name__}: {error}"[:500]}
    record.add(section, {**what, **row})


# --------------------------------------------------------------------------------------------- timing

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(call: Callable[[], object], device: torch.device, min_seconds: float, warmup: int,
                     mark_steps: bool = False) -> float:
    """Wall seconds of one call: after `warmup` calls, doubling runs until `min_seconds` have passed."""
    def run(times: int) -> None:
        for _ in range(times):
            if mark_steps:  # CUDA graphs: each call's outputs may be overwritten by the next one
                torch.compiler.cudagraph_mark_step_begin()
            call()

    run(warmup)
    synchronize(device)
    calls, total, chunk = 0, 0.0, 1
    while calls == 0 or total < min_seconds:
        started = time.perf_counter()
        run(chunk)
        synchronize(device)
        total += time.perf_counter() - started
        calls += chunk
        chunk *= 2
    return total / calls


def peak_memory(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def closeness(images: torch.Tensor, reference: torch.Tensor) -> dict:
    """Mean absolute difference and PSNR (dB, range [-1, 1], clamped as pixels are) against the reference."""
    difference = images.float().clamp(-1, 1) - reference.float().clamp(-1, 1)
    mse = difference.pow(2).mean().item()
    return {"mad": round((images.float() - reference.float()).abs().mean().item(), 5),
            "psnr_db": round(10 * math.log10(4 / mse), 2) if mse > 0 else None}  # None: identical


# --------------------------------------------------------------------------------------------- inference

@dataclass
class Scene:
    """A reference Reenactor (fp32, eager) and fixed inputs: one source, a table of driving rows."""

    reenactor: Reenactor
    wplus: torch.Tensor  # [1, L, D]
    source: torch.Tensor  # [1, 15]
    driving: torch.Tensor  # [N, 15]
    codes: int
    references: dict[int, torch.Tensor] = field(default_factory=dict)  # the reference images of the first `codes`

    def inputs(self, batch: int, offset: int = 0):
        return self.wplus, self.source, self.driving[offset:offset + batch]


def make_scene(scale: Scale, device: torch.device, rows: int, codes: int, transformer: bool = False) -> Scene:
    torch.manual_seed(0)
    with torch.device(device):
        generator = Generator(**scale.generator()).eval()
        directions = DirectionMatrix(shift_dim=scale.style_dim, num_layers=min(8, generator.n_latent)).eval()
        refiner = None
        if transformer:
            resolution = scale.transformer_resolution
            refiner = FeatureTransformer(generator.channels[resolution], resolution, generator.size).eval()
            for head in (refiner.flow, refiner.gate):  # a transformer that does something (a new one is the identity)
                torch.nn.init.normal_(head.weight, std=0.02)
    reenactor = Reenactor(generator, directions, ParamRanges.load(), truncation=0.7, mean_samples=scale.mean_samples,
                          transformer=refiner).eval()
    seeded = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = torch.randn(1, scale.style_dim, generator=seeded).to(device)
        wplus = generator.get_latent(z).unsqueeze(1).repeat(1, generator.n_latent, 1)
    source = torch.cat([torch.randn(1, 3, generator=seeded) * 10, torch.rand(1, 12, generator=seeded) * 0.3], 1)
    spread = torch.tensor([10.0] * 3 + [0.2] * 12)
    driving = source + torch.randn(rows, 15, generator=seeded) * spread
    return Scene(reenactor, wplus, source.to(device), driving.to(device), codes)


def reference_images(scene: Scene, chunk: int) -> torch.Tensor:
    """Eager fp32 images of the first `codes` driving rows."""
    if chunk not in scene.references:
        with torch.inference_mode():
            parts = [scene.reenactor(*scene.inputs(chunk, start)) for start in range(0, scene.codes, chunk)]
        scene.references[chunk] = torch.cat(parts)[:scene.codes]
    return scene.references[chunk]


def runner(scene: Scene, variant: Variant, device: torch.device, backend: str) -> Callable:
    """A callable reenacting (wplus, source, driving) the way `variant` says."""
    reenactor = scene.reenactor if variant == BASELINE else copy.deepcopy(scene.reenactor)
    reenactor.use_render_path(variant.path)
    call = reenactor.compiled(variant.cuda_graphs, backend) if variant.compile else reenactor
    autocast = torch.autocast(device.type, dtype=dtype_of(variant.autocast)) if variant.autocast else nullcontext()

    def reenact(*inputs) -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return call(*inputs)

    return reenact


def measure_variant(scene: Scene, variant: Variant, batches: list[int], device: torch.device, args,
                    record: Record, section: str, baseline: dict[int, float]) -> None:
    reenact = runner(scene, variant, device, args.compile_backend)
    graphs = variant.cuda_graphs and device.type == "cuda"
    for batch in batches:
        if record.over_budget(f"{section} {variant.name} batch {batch}"):
            return

        def measure() -> dict:
            reset_peak(device)
            started = time.perf_counter()
            reenact(*scene.inputs(batch))  # the first call (compiles when compiled)
            synchronize(device)
            first = time.perf_counter() - started
            seconds = seconds_per_call(lambda: reenact(*scene.inputs(batch)), device, args.min_seconds, args.warmup,
                                       graphs)
            rate = batch / seconds
            if variant == BASELINE:
                baseline[batch] = rate
            row = {"frames_per_s": round(rate, 1 if rate >= 10 else 3),
                   "ratio_to_fp32_eager": round(rate / baseline[batch], 3)
                   if batch in baseline else None, "first_call_s": round(first, 2), "peak_gib": peak_memory(device)}
            if batch == max(batches) and variant != BASELINE:  # the variant's images against the reference
                parts = []
                for start in range(0, scene.codes, batch):
                    if graphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    parts.append(reenact(*scene.inputs(batch, start)).clone())
                row.update(closeness(torch.cat(parts)[:scene.codes], reference_images(scene, min(batch, 32))),
                           codes=scene.codes)
            return row

        what = {"variant": variant.name, "batch": batch}
        if variant.compile:
            what["backend"] = args.compile_backend
        guarded(record, section, what, measure)


def inference_section(args, device: torch.device, scale: Scale, record: Record, compiled: bool) -> None:
    batches = args.batches if not compiled else args.compile_batches
    rows = max(max(batches), args.codes + max(batches))
    scene = make_scene(scale, device, rows, args.codes)
    baseline: dict[int, float] = {}
    section = "compile" if compiled else "inference"
    if compiled:  # the same run's eager fp32 rates at these batches, for the ratios
        measure_variant(scene, BASELINE, batches, device, args, record, section, baseline)
    for variant in COMPILED_VARIANTS if compiled else EAGER_VARIANTS:
        if variant.cuda_graphs and device.type != "cuda":
            continue  # CUDA graphs exist on CUDA only; the CPU takes the plain compiled variant
        if args.variants and variant.name not in args.variants:
            continue
        measure_variant(scene, variant, batches, device, args, record, section, baseline)
        torch._dynamo.reset()
    del scene
    reset_peak(device)


# --------------------------------------------------------------------------------------------- transformer, tuning

def transformer_section(args, device: torch.device, scale: Scale, record: Record) -> None:
    batch = args.transformer_batch
    scene = make_scene(scale, device, batch, codes=1, transformer=True)
    image = torch.rand(1, 3, scale.size, scale.size, generator=torch.Generator().manual_seed(2)).to(device) * 2 - 1
    for variant in (BASELINE, Variant("bf16 fast NHWC", FAST_BF16)):
        if record.over_budget(f"transformer {variant.name}"):
            return
        reenactor = copy.deepcopy(scene.reenactor).use_render_path(variant.path)

        def measure() -> dict:
            with torch.inference_mode():
                detail = reenactor.source_detail(scene.wplus, image)
                plain = seconds_per_call(lambda: reenactor(*scene.inputs(batch)), device, args.min_seconds,
                                         args.warmup)
                refined = seconds_per_call(lambda: reenactor(*scene.inputs(batch), source_image=image,
                                                             source_detail=detail), device, args.min_seconds,
                                           args.warmup)
            return {"g_a_frames_per_s": round(batch / plain, 1), "with_transformer_frames_per_s":
                    round(batch / refined, 1), "ratio": round(plain / refined, 3)}

        guarded(record, "transformer", {"variant": variant.name, "batch": batch}, measure)


def tune_section(args, device: torch.device, scale: Scale, record: Record) -> None:
    from training.tune_generator import GeneratorTuningConfig, tune_generator

    scene = make_scene(scale, device, 1, codes=1, transformer=True)
    reenactor = scene.reenactor
    code = reenactor.truncate(scene.wplus)
    with torch.no_grad():
        target = reenactor.generator.synthesis(code).image.clamp(-1, 1).detach()
    transformer = reenactor.transformer
    for name, render in (("G alone", None),
                         ("G + transformer", lambda g: transformer.render(g, code, code, target))):
        if record.over_budget(f"tune {name}"):
            return

        def measure() -> dict:
            tune_generator(reenactor.generator, code, target, GeneratorTuningConfig(steps=2, lpips_weight=0), None,
                           render)  # warm-up: allocator, cuDNN's choices
            synchronize(device)
            _, report = tune_generator(reenactor.generator, code, target,
                                       GeneratorTuningConfig(steps=args.tune_steps, lpips_weight=0), None, render)
            return {"ms_per_step": round(1000 * report["seconds"] / args.tune_steps, 2), "steps": args.tune_steps,
                    "layers": report["layers"]}

        guarded(record, "tune", {"what": name, "precision": "fp32", "batch": 1}, measure)


# --------------------------------------------------------------------------------------------- training

def make_store(root: Path, crop: int, clips: int, frames: int, style_dim: int, n_latent: int) -> str:
    """Smooth random crops (compressible like faces, unlike noise), chunked as preprocessing writes them, with the
    face3d (synth-regressor) and inversion stages that train-feature-transformer reads."""
    from storage.store import ClipKey, ClipStore

    store = ClipStore.open(root, chunk_frames=16)
    rng = np.random.default_rng(0)
    for number in range(clips):
        key = ClipKey(f"id{number:02d}", "video", "00001")
        cells = max(crop // 32, 1)
        small = rng.integers(0, 255, (frames, cells, cells, 3)).astype(np.uint8)
        with store.write_clip(key) as clip:
            clip.put("crops", np.repeat(np.repeat(small, crop // cells, axis=1), crop // cells, axis=2))
        with store.write_stage(key, "face3d") as stage:
            stage.put("params", (rng.standard_normal((frames, 15)) * 0.1).astype(np.float32))
            stage.put("landmarks", np.zeros((frames, 68, 2), np.float32))
            stage.put("found", np.ones(frames, bool))
            stage.set_attrs(backend="synth-regressor")
        with store.write_stage(key, "inversion") as stage:
            stage.put("wplus", rng.standard_normal((frames, n_latent, style_dim)).astype(np.float16))
            stage.set_attrs(encoder="benchmark")
    return str(store.root)


def network_files(root: Path, scale: Scale, size: int) -> tuple[str, str]:
    """A random G of `size` (exported as train-generator exports it) and a random A with the official ranges table
    (as train-directions exports it)."""
    from training.common.checkpoints import Export, save_export

    torch.manual_seed(size)
    config = scale.generator(size)
    g_path, a_path = root / f"g{size}.safetensors", root / f"a{size}.safetensors"
    generator = Generator(**config)
    save_export(Export(generator, "models.stylegan2:Generator", config, "g_ema"), g_path, torch.float16, {})
    arguments = {"shift_dim": scale.style_dim, "input_dim": 15, "w_plus": True,
                 "num_layers": min(8, generator.n_latent), "bias": True}
    entries = {"shift_scale": 6.0, "ranges": ParamRanges.load().table.tolist()}
    save_export(Export(DirectionMatrix(**arguments), "models.directions:DirectionMatrix", arguments, "A_matrix",
                       entries=entries), a_path, torch.float32, {})
    return str(g_path), str(a_path)


def stage_run(stage: str, size: int, precision: str, scale: Scale, args, files: dict, device: torch.device,
              work: Path, steps: int, fast_ops: str = "off"):
    """(the stage's Stage class, its config, its data resolution) for one measured run."""
    batch = TRAIN_BATCHES[stage][1 if size >= 256 else 0] if not args.smoke else 2
    generator, directions, store = files[size]
    common = {"store": store, "out": str(work / f"{stage}-{size}-{precision}-{fast_ops}"), "steps": steps,
              "batch_size": batch,
              "device": str(device), "precision": precision, "log_every": max(steps // 2, 1),
              "checkpoint_every": steps, "image_every": 10 * steps, "workers": args.workers, "resume": False,
              "seed": 0}
    if stage == "generator":
        from training.generator import GeneratorStage, GeneratorTrainingConfig

        config = GeneratorTrainingConfig(**scale.generator(size), fast_ops=fast_ops, **common)
        return GeneratorStage, config, size
    if stage == "encoder":
        from training.encoder import EncoderStage, EncoderTrainingConfig

        config = EncoderTrainingConfig(generator=generator, num_layers=scale.encoder_layers, input_size=size,
                                       channel_max=scale.encoder_channel_max, mean_latent_samples=scale.mean_samples,
                                       **common)
        return EncoderStage, config, size
    from training.directions import store_crop_size

    if stage == "directions":
        from training.directions import DirectionsStage, DirectionsTrainingConfig

        config = DirectionsTrainingConfig(generator=generator, synthetic_steps=10**9, real_steps=0, paired_steps=0,
                                          ranges="measure", ranges_samples=64, mean_latent_samples=scale.mean_samples,
                                          validation_count=4, **common)
        return DirectionsStage, config, store_crop_size(config)
    from training.feature_transformer import FeatureTransformerStage, FeatureTransformerTrainingConfig

    config = FeatureTransformerTrainingConfig(generator=generator, directions=directions, truncation=0.7,
                                              resolution=scale.transformer_resolution,
                                              mean_latent_samples=scale.mean_samples, validation_count=4, **common)
    return FeatureTransformerStage, config, store_crop_size(config)


def training_files(args, scale: Scale, work: Path) -> dict:
    files = {}
    for size in args.train_sizes:
        n_latent = 2 * int(math.log2(size)) - 2  # G's W+ layers at this size
        store = make_store(work / f"store{size}.zarr", max(args.train_sizes), clips=4 if args.smoke else 8,
                           frames=16 if args.smoke else 64, style_dim=scale.style_dim, n_latent=n_latent)
        files[size] = (*network_files(work, scale, size), store)
    return files


def train_section(args, device: torch.device, scale: Scale, record: Record, work: Path) -> None:
    from training.common.loop import train

    files = training_files(args, scale, work)
    runs = []
    for stage in args.stages:
        for size in args.train_sizes:
            for precision in args.train_precisions:
                runs.append((stage, size, precision, "off"))
                if stage == "generator" and precision != "fp32":  # G and D with the FIR folded in their convolutions
                    runs.append((stage, size, precision, "folded"))
    for stage, size, precision, fast_ops in runs:
        if record.over_budget(f"train {stage} {size} {precision} fast_ops={fast_ops}"):
            return
        build, config, resolution = stage_run(stage, size, precision, scale, args, files, device, work,
                                              args.train_steps, fast_ops)

        def measure() -> dict:
            started = time.perf_counter()
            reset_peak(device)
            summary = train(build, config, lambda _: resolution, save=False)
            shutil.rmtree(config.out, ignore_errors=True)
            window = summary.last_window
            return {"images_per_s": round(window["images_per_s"], 1 if window["images_per_s"] >= 10 else 3),
                    "steps_per_s": round(window["steps_per_s"], 3),
                    "data_wait": round(window["data_wait"], 3), "timed_steps": config.log_every,
                    "peak_gib": peak_memory(device), "wall_s": round(time.perf_counter() - started, 1)}

        guarded(record, "train", {"stage": stage, "size": size, "precision": precision,
                                  "batch": config.batch_size, "fast_ops": fast_ops}, measure)


# --------------------------------------------------------------------------------------------- profile

def profile_section(args, device: torch.device, scale: Scale, record: Record, work: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    from training.common.distributed import Distributed
    from training.data import StoreCrops, crop_batches, to_model_range

    size = min(args.train_sizes)
    files = training_files(argparse.Namespace(**{**vars(args), "train_sizes": [size]}), scale, work)
    group = Distributed(0, 0, 1, device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for stage in args.profile_stages:
        if record.over_budget(f"profile {stage}"):
            return
        build, config, resolution = stage_run(stage, size, precision, scale, args, files, device, work,
                                              args.profile_steps)

        def measure() -> dict:
            torch.manual_seed(0)
            dataset = StoreCrops(config.store, resolution, cache_chunks=config.cache_chunks)
            network = build(config, group, dataset)
            batches = crop_batches(dataset, config.batch_size, 0, 0, 1, config.chunk_block, 0, 0,
                                   device.type == "cuda")
            for step in range(2):  # warm-up
                network.train_step(step, to_model_range(next(batches), device))
            synchronize(device)
            with profile(activities=activities) as trace:
                started = time.perf_counter()
                for step in range(2, 2 + args.profile_steps):
                    network.train_step(step, to_model_range(next(batches), device))
                synchronize(device)
                wall = (time.perf_counter() - started) / args.profile_steps
            return profile_row(trace, wall, args.profile_steps, device, record, f"{stage}-{size}-{precision}")

        guarded(record, "profile", {"stage": stage, "size": size, "precision": precision,
                                    "batch": config.batch_size}, measure)


def profile_row(trace, wall: float, steps: int, device: torch.device, record: Record, name: str) -> dict:
    events = trace.key_averages()
    counts = {event.key: event.count for event in events}

    def copies(direction: str) -> int:  # CUDA's copy activities: "Memcpy HtoD (Pageable -> Device)", ...
        return sum(count for key, count in counts.items() if key.startswith(f"Memcpy {direction}"))

    # the device's own events (kernels, copies): their time is when the device was busy
    device_time = sum(event.self_device_time_total for event in events
                      if event.device_type == torch.autograd.DeviceType.CUDA) / 1e6 / steps
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=25)
    if record.out is not None:
        record.out.parent.mkdir(parents=True, exist_ok=True)
        (record.out.parent / f"{record.out.stem}-profile-{name}.txt").write_text(table + "\n")
    return {"ms_per_step": round(1000 * wall, 2),
            # .item() / float() / bool() of a tensor; on a GPU only the device-to-host copies among them wait for it
            "host_reads_per_step": round(counts.get("aten::_local_scalar_dense", 0) / steps, 1),
            "host_to_device_copies_per_step": round(copies("HtoD") / steps, 1) if device.type == "cuda" else None,
            "device_to_host_copies_per_step": round(copies("DtoH") / steps, 1) if device.type == "cuda" else None,
            "stream_syncs_per_step": round(counts.get("cudaStreamSynchronize", 0) / steps, 1)
            if device.type == "cuda" else None,
            "device_busy_share": round(device_time / wall, 3) if device.type == "cuda" else None,
            "operators_per_step": round(sum(c for k, c in counts.items() if k.startswith("aten::")) / steps)}


# --------------------------------------------------------------------------------------------- output

def print_tables(record: Record) -> None:
    sections = record.data["sections"]
    for name in ("inference", "compile"):
        rows = [row for row in sections.get(name, []) if "frames_per_s" in row]
        if rows:
            print(f"\n{name}: G + A, frames/s (ratio to eager fp32 at the batch); MAD / PSNR vs eager fp32")
            print("| variant | batch | frames/s | ratio | MAD | PSNR dB | peak GiB |\n|---|---|---|---|---|---|---|")
            for row in rows:
                print(f"| {row['variant']} | {row['batch']} | {row['frames_per_s']} | {row['ratio_to_fp32_eager']} | "
                      f"{row.get('mad', '')} | {row.get('psnr_db', '')} | {row['peak_gib']} |")
    for row in sections.get("transformer", []):
        print(f"\ntransformer ({row['variant']}, batch {row['batch']}): {row}")
    for row in sections.get("tune", []):
        print(f"tune ({row['what']}): {row}")
    rows = [row for row in sections.get("train", []) if "images_per_s" in row]
    if rows:
        print("\ntraining: images/s (second half of the run), share of time waiting for data")
        print("| stage | size | precision | fast ops | batch | images/s | steps/s | data wait |\n"
              "|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['stage']} | {row['size']} | {row['precision']} | {row['fast_ops']} | {row['batch']} | "
                  f"{row['images_per_s']} | {row['steps_per_s']} | {row['data_wait']} |")
    errors = [row for rows in sections.values() for row in rows if "error" in row]
    for row in errors:
        print(f"error: {row}")
    for line in record.data["skipped"]:
        print(f"skipped: {line}")


def requirements() -> list[str]:
    """`name==version` of every installed distribution the benchmark imports, beyond the torch installation."""
    from importlib import metadata

    import training.directions  # noqa: F401  (everything the sections import)
    import training.encoder  # noqa: F401
    import training.feature_transformer  # noqa: F401
    import training.generator  # noqa: F401
    import training.tune_generator  # noqa: F401

    owners = metadata.packages_distributions()
    ours = {path.name for path in ROOT.iterdir() if path.is_dir()}  # this repository: it travels as it is
    tops = {module.split(".")[0] for module in list(sys.modules)} - ours
    names = {dist for top in tops for dist in owners.get(top, [])}
    pins = {f"{name}=={metadata.version(name)}" for name in names
            if name.lower().replace("_", "-") not in TORCH_FAMILY and not name.lower().startswith(("nvidia", "cuda"))}
    return sorted(pins, key=str.lower)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="JSON results (rewritten after every measurement)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--smoke", action="store_true", help="tiny networks and steps: every code path in seconds")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--batches", default=None, help="G + A batch sizes (default: 1,32,128,256 on a GPU)")
    parser.add_argument("--compile-batches", default=None, help="batch sizes of the compiled variants (default 128)")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; eager with "
                        "--smoke: the graph is captured, not compiled)")
    parser.add_argument("--variants", default=None, help="only these G + A variants (comma list of their names)")
    parser.add_argument("--codes", type=int, default=None, help="fixed codes of the MAD / PSNR check (default 64)")
    parser.add_argument("--transformer-batch", type=int, default=None, help="batch of the transformer's cost (128)")
    parser.add_argument("--tune-steps", type=int, default=None, help="timed tuning steps (default 20)")
    parser.add_argument("--stages", default=",".join(STAGES), help="training stages to time")
    parser.add_argument("--train-sizes", default=None, help="image sizes of the training runs (default 128,256)")
    parser.add_argument("--train-precisions", default=None, help="default fp32,bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--train-steps", type=int, default=None, help="steps per run, the second half timed (16)")
    parser.add_argument("--profile-steps", type=int, default=None, help="profiled steps per stage (default 4)")
    parser.add_argument("--profile-stages", default="generator", help="stages the profile section runs")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 4 on a GPU, else 0)")
    parser.add_argument("--min-seconds", type=float, default=None, help="timing per measurement (default 1.0)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 3)")
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds after which no new measurement "
                        "starts (the rest is listed as skipped)")
    parser.add_argument("--requirements", action="store_true", help="print the pinned wheels needed beyond torch")
    args = parser.parse_args(argv)
    if args.requirements:
        print("\n".join(requirements()))
        return 0

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    scale = SMOKE if args.smoke else OFFICIAL

    def numbers(text: str | None, gpu_default: str, cpu_default: str, smoke_default: str) -> list[int]:
        return [int(v) for v in (text or (smoke_default if args.smoke else gpu_default if gpu else cpu_default))
                .split(",")]

    args.batches = numbers(args.batches, "1,32,128,256", "1,4", "1,2")
    args.compile_batches = numbers(args.compile_batches, "128", "4", "2")
    args.train_sizes = numbers(args.train_sizes, "128,256", "64,128", "32")
    args.codes = args.codes or (4 if args.smoke else 64 if gpu else 8)
    args.transformer_batch = args.transformer_batch or (2 if args.smoke else 128 if gpu else 4)
    args.tune_steps = args.tune_steps or (2 if args.smoke else 20 if gpu else 4)
    args.train_steps = args.train_steps or (2 if args.smoke else 16 if gpu else 6)
    args.profile_steps = args.profile_steps or (1 if args.smoke else 4)
    args.train_precisions = (args.train_precisions or ("fp32,bf16" if gpu else "fp32")).split(",")
    args.workers = args.workers if args.workers is not None else (4 if gpu else 0)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (0.0 if args.smoke else 1.0)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.stages = args.stages.split(",")
    args.profile_stages = args.profile_stages.split(",")
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    args.variants = args.variants.split(",") if args.variants else None
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS) | set(args.stages + args.profile_stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown sections or stages: {', '.join(sorted(unknown))}")
    if gpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithms once

    record = Record(args.out, args.budget)
    record.data["settings"] = {key: value for key, value in vars(args).items() if key not in ("out", "budget")} | {
        "budget": None if math.isinf(args.budget) else args.budget, "scale": scale.__dict__, "device": str(device)}
    print(f"torch {torch.__version__} on {record.data['environment']['device']} ({device}); "
          f"{'smoke sizes' if args.smoke else 'official 256 px layout, random weights'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        for section in sections:
            if record.over_budget(section):
                continue
            print(f"\n[{section}] at {record.elapsed():.0f} s", flush=True)
            if section in ("inference", "compile"):
                inference_section(args, device, scale, record, compiled=section == "compile")
            elif section == "transformer":
                transformer_section(args, device, scale, record)
            elif section == "tune":
                tune_section(args, device, scale, record)
            elif section == "train":
                train_section(args, device, scale, record, Path(scratch) / "train")
            elif section == "profile":
                profile_section(args, device, scale, record, Path(scratch) / "profile")
    print_tables(record)
    record.save()
    failed = any("error" in row for rows in record.data["sections"].values() for row in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
