"""`evaluate`: the paper's self- and cross-reenactment protocols on a test split of a store, measured per frame,
per clip and per protocol (the output folder is described in `tasks.evaluate`)."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from pydantic import BaseModel

import tasks  # noqa: F401
from tasks.evaluate import (SETS_FILE, EvaluateConfig, PairEvaluation, distribution_task, evaluate_pair_task,
                            linearity_task, plan_task, write_json, write_results_task)
from tasks.progress import progress
from tasks.protocols import ReenactPair
from tasks.reenact import ReenactConfig
from tasks.runners import RunnerConfig

HEADLINE = ("csim", "lpips", "pixel", "inversion", "apd", "aed", "truth_apd", "truth_aed")  # the summary's one line per protocol


class EvaluateSummary(BaseModel):
    out: str
    pairs: dict[str, int]
    failed: dict[str, int]
    frames: dict[str, int]
    headline: dict[str, dict[str, float | None]]  # protocol -> metric -> mean (fid included)
    networks: dict[str, str | None]
    seconds: float

    @classmethod
    def of(cls, written: dict, out: str, seconds: float) -> EvaluateSummary:
        """The headline of summary.json's content."""
        protocols = written["protocols"]
        return cls(out=out, pairs={p: block["pairs"] for p, block in protocols.items()},
                   failed={p: block["pairs_failed"] for p, block in protocols.items()},
                   frames={p: block["frames"] for p, block in protocols.items()},
                   headline={p: {**{name: block["metrics"][name]["mean"] for name in HEADLINE
                                    if name in block["metrics"]}, "fid": block["distribution"]["fid"]}
                             for p, block in protocols.items()},
                   networks=written["networks"], seconds=seconds)

    def lines(self) -> list[str]:
        lines = []
        for protocol, pairs in self.pairs.items():
            figures = ", ".join(f"{name} {'-' if value is None else f'{value:.4g}'}"
                                for name, value in self.headline[protocol].items())
            lines.append(f"{protocol}: {pairs} pairs ({self.failed[protocol]} failed), {self.frames[protocol]} "
                         f"frames; {figures}")
        names = self.networks
        lines.append(f"measured by: identity {names['identity']}, LPIPS {names['lpips'] or '-'}, Net3D "
                     f"{names['net3d']}, FID {names['inception'] or '-'}")
        lines.append(f"results: {self.out} ({self.seconds:.1f} s)")
        return lines


@flow(name="evaluate", log_prints=True)
def evaluate(config: EvaluateConfig, runner: RunnerConfig = RunnerConfig()) -> EvaluateSummary:
    """Evaluate `config.reenact`'s weights on the store's test split: per protocol, reenact every pair's chosen
    frames in memory and measure them (CSIM, LPIPS, APD, AED, and against the truth of a synthetic world), then
    FID/KID per protocol and the linearity of A. Fixed seeds; the pair lists are saved beside the results."""
    started = time.perf_counter()
    logger = get_run_logger()
    plan = plan_task(config)
    logger.info("evaluating %s on %d clips of %s: %s", config.reenact.weights, len(plan.clips), config.store,
                ", ".join(f"{protocol} {len(pairs)} pairs" for protocol, pairs in plan.pairs.items()))
    evaluations = {protocol: _evaluate_pairs.with_options(task_runner=runner.build())(pairs, protocol, config)
                   for protocol, pairs in plan.pairs.items()}
    for evaluation in (e for done in evaluations.values() for e in done if e.status == "failed"):
        logger.warning("failed %s: %s", evaluation.pair.name, evaluation.error)
    distribution = [distribution_task(protocol, done, config) for protocol, done in evaluations.items()]
    linearity = linearity_task(config, plan.clips) if config.linearity else None
    written = write_results_task(config, plan, evaluations, distribution, linearity, time.perf_counter() - started)
    summary = EvaluateSummary.of(written, config.out, time.perf_counter() - started)
    logger.info("done: %s", summary.model_dump_json())
    return summary


@flow(name="evaluate-pairs")
def _evaluate_pairs(pairs: list[ReenactPair], protocol: str, config: EvaluateConfig) -> list[PairEvaluation]:
    """Fan one protocol's pairs out on the chosen task runner (sample grids for the first `config.samples`)."""
    futures = evaluate_pair_task.map(pairs, protocol=unmapped(protocol), config=unmapped(config),
                                     sample=[number < config.samples for number in range(len(pairs))])
    evaluations = []
    with progress(total=len(futures), description=f"evaluate {protocol}") as advance:
        for future in futures:  # in the pairs' order, so the tables are too
            evaluations.append(future.result())
            advance(evaluations[-1].status)
    return evaluations


class SetsSummary(BaseModel):
    """What an evaluation of several weights sets hands back: each set's summary, by label."""

    out: str
    sets: dict[str, EvaluateSummary]

    def lines(self) -> list[str]:
        lines = []
        for label, summary in self.sets.items():
            lines += [f"set {label}:", *(f"  {line}" for line in summary.lines())]
        return lines + [f"sets: {Path(self.out) / SETS_FILE}"]


@flow(name="evaluate-sets", log_prints=True)
def evaluate_sets(config: EvaluateConfig, sets: dict[str, ReenactConfig],
                  runner: RunnerConfig = RunnerConfig()) -> SetsSummary:
    """`evaluate` of each set on the same pairs (the same store, split and seeds), into `<out>/<label>/`, then
    `<out>/sets.json` (the labels in order, with each set's weights; written last: it marks a complete comparison,
    which benchmark-report shows side by side)."""
    out = Path(config.out)
    (out / SETS_FILE).unlink(missing_ok=True)
    summaries = {label: evaluate(config=config.model_copy(update={"out": str(out / label), "reenact": reenact}),
                                 runner=runner) for label, reenact in sets.items()}
    write_json(out / SETS_FILE, {"sets": [{"label": label, "weights": reenact.weights,
                                           "weights_dir": reenact.weights_dir,
                                           "feature_transformer": reenact.feature_transformer}
                                          for label, reenact in sets.items()]})
    return SetsSummary(out=str(out), sets=summaries)
