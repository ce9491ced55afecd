"""Size, speed and memory of the pipeline's networks, with random weights.

    python benchmarks/models.py                                   # all networks, CPU (and CUDA when present)
    python benchmarks/models.py --device cuda --batch-sizes 1,16,64 --networks generator,e4e
    python benchmarks/models.py --help

Per network (the registry's official configurations: StyleGAN2 G and D at 256 px, e4e, A, ArcFace IR-SE-50, DECA's
encoder): parameter count, median and best forward time over `--repeats` runs after `--warmup` runs, images/s from
the median, and peak memory. On a shared machine the best time is the one least disturbed by other processes.

Every (network, device, precision) runs in a fresh subprocess, so the memory figure is its own. On the CPU it is
the growth of the process's peak RSS (`ru_maxrss`) from just before the network is built: weights plus
activations; batch sizes run in increasing order, so each row's peak is that batch's. On CUDA it is
`torch.cuda.max_memory_allocated` per row (weights, input and activations).

CPU runs fp32 at batch sizes 1 and 4 by default (batch 16 of e4e takes tens of seconds on 2 cores); CUDA runs fp32,
bf16 and fp16 (autocast) at batch sizes 1 and 16. Forward passes run under `torch.inference_mode()`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Network:
    """A network to measure: its registry entry (builder and official config) and how to call it on a batch."""

    weights: str  # name in storage.weights.WEIGHT_FILES
    input_shape: tuple[int, ...]  # one item of the batch
    call: str  # how forward is invoked, see `forward`


NETWORKS: dict[str, Network] = {
    "generator": Network("stylegan2-voxceleb256", (14, 512), "wplus"),
    "discriminator": Network("stylegan2-voxceleb256-discriminator", (3, 256, 256), "plain"),
    "e4e": Network("e4e-voxceleb256", (3, 256, 256), "plain"),
    "directions": Network("directions-voxceleb256", (15,), "plain"),
    "arcface": Network("arcface-ir-se50", (3, 112, 112), "plain"),
    "deca-encoder": Network("deca", (3, 224, 224), "plain"),
}
PRECISIONS = ("fp32", "bf16", "fp16")


def forward(network, inputs, call: str):
    """One forward pass. The generator takes W+ codes as rosinality's does: a list of styles, already in W+."""
    if call == "wplus":
        return network([inputs], input_is_latent=True, randomize_noise=False)
    return network(inputs)


def measure(name: str, device: str, precision: str, batch_sizes: list[int], warmup: int, repeats: int) -> list[dict]:
    """Rows for one network on one device in one precision (run inside a fresh process)."""
    import torch

    from storage.weights import WEIGHT_FILES, build

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spec = NETWORKS[name]
    entry = WEIGHT_FILES[spec.weights]
    torch.manual_seed(0)
    network = build(entry.builder, entry.config).to(device).eval()
    parameters = sum(p.numel() for p in network.parameters())
    on_gpu = device.startswith("cuda")
    synchronise: Callable[[], None] = torch.cuda.synchronize if on_gpu else (lambda: None)
    torch.backends.cudnn.benchmark = on_gpu  # fixed input sizes: let cuDNN pick its fastest kernels once
    autocast = torch.autocast(device_type=device.split(":")[0], enabled=precision != "fp32",
                              dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    rows = []
    for batch in batch_sizes:
        inputs = torch.randn(batch, *spec.input_shape, device=device)
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.inference_mode(), autocast:
            for run in range(warmup + repeats):
                synchronise()
                start = time.perf_counter()
                forward(network, inputs, spec.call)
                synchronise()
                if run >= warmup:
                    times.append(time.perf_counter() - start)
        if on_gpu:
            peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:  # ru_maxrss is in KiB on Linux
            peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
        median = statistics.median(times)
        rows.append({"network": name, "device": device, "precision": precision, "batch": batch,
                     "parameters": parameters, "median_s": median, "best_s": min(times), "images_per_s": batch / median,
                     "peak_mib": peak_mib, "threads": torch.get_num_threads()})
    return rows


def run_isolated(name: str, device: str, precision: str, args: argparse.Namespace) -> list[dict]:
    """`measure` in a subprocess, so that its peak memory is its own."""
    command = [sys.executable, __file__, "--worker", name, "--device", device, "--precisions", precision,
               "--batch-sizes", ",".join(map(str, args.batch_sizes)),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"network": name, "device": device, "precision": precision, "error": reason}]
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict]) -> str:
    """The measured rows as a plain-text table; networks that failed are listed under it with the reason."""
    header = ("network", "device", "prec", "batch", "params (M)", "median ms", "best ms", "images/s", "peak MiB")
    lines = [(row["network"], row["device"], row["precision"], str(row["batch"]), f"{row['parameters'] / 1e6:.2f}",
              _milliseconds(row["median_s"]), _milliseconds(row["best_s"]), f"{row['images_per_s']:.1f}",
              f"{row['peak_mib']:.0f}")
             for row in rows if "error" not in row]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    table = ["  ".join(cell.rjust(width) if n >= 3 else cell.ljust(width)
                       for n, (cell, width) in enumerate(zip(line, widths))).rstrip() for line in (header, *lines)]
    failed = [f"{row['network']} on {row['device']} in {row['precision']} failed: {row['error']}"
              for row in rows if "error" in row]
    return "\n".join(table + failed)


def _milliseconds(seconds: float) -> str:
    milliseconds = seconds * 1e3
    if milliseconds >= 100:
        return f"{milliseconds:.0f}"
    return f"{milliseconds:.1f}" if milliseconds >= 1 else f"{milliseconds:.2g}"


def _int_list(text: str) -> list[int]:
    return sorted({int(item) for item in text.split(",") if item})


def _name_list(choices) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [item for item in text.split(",") if item]
        unknown = sorted(set(names) - set(choices))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names
    return parse


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CPU, plus CUDA when available (default)")
    parser.add_argument("--networks", type=_name_list(NETWORKS), default=list(NETWORKS),
                        help=f"comma-separated subset of {','.join(NETWORKS)} (default: all)")
    parser.add_argument("--batch-sizes", type=_int_list, default=None,
                        help="comma-separated; default 1,4 on CPU (batch 16 of e4e is slow there), 1,16 on CUDA")
    parser.add_argument("--precisions", type=_name_list(PRECISIONS), default=None,
                        help="comma-separated of fp32,bf16,fp16 (autocast); default fp32 on CPU, all three on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2 CPU, 3 CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs; the median is reported "
                                                                   "(default 5 CPU, 10 CUDA)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one network, print JSON
    args = parser.parse_args(argv)

    if args.worker:
        rows = measure(args.worker, args.device, args.precisions[0], args.batch_sizes, args.warmup, args.repeats)
        print(json.dumps(rows))
        return

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    rows = []
    for device in devices:
        on_gpu = device == "cuda"
        settings = argparse.Namespace(
            batch_sizes=args.batch_sizes or ([1, 16] if on_gpu else [1, 4]),
            precisions=args.precisions or (list(PRECISIONS) if on_gpu else ["fp32"]),
            warmup=args.warmup if args.warmup is not None else (3 if on_gpu else 2),
            repeats=args.repeats if args.repeats is not None else (10 if on_gpu else 5),
        )
        for precision in settings.precisions:
            for name in args.networks:
                started = time.perf_counter()
                rows += run_isolated(name, device, precision, settings)
                print(f"{name} on {device} in {precision}: {time.perf_counter() - started:.0f} s", file=sys.stderr,
                      flush=True)
    print(_environment(torch))
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _environment(torch) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads ({os.cpu_count()} cores), GPU: {gpu}; "
            f"random weights; median of the timed runs")


if __name__ == "__main__":
    main()
