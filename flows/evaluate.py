"""`evaluate`: the paper's self- and cross-reenactment protocols on a test split of a store, measured per frame,
per clip and per protocol (the output folder is described in `tasks.evaluate`)."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from pydantic import Field

from flows.summary import FlowSummary, publish, shown
from tasks.evaluate import (EvaluateConfig, Measuring, PairEvaluation, check_request, distribution_task, evaluate_pair_task,
                            linearity_task, measuring_networks, plan_task, weights_choices, write_results_task)
from tasks.evaluation_summary import SETS_FILE, SUMMARY_FILE, EvaluationSets, EvaluationSummary, Networks, SetEntry
from tasks.progress import progress
from tasks.protocols import ReenactPair
from tasks.reenact import ReenactConfig
from tasks.runners import RunnerConfig

HEADLINE = ("csim", "lpips", "pixel", "inversion", "apd", "aed", "truth_apd", "truth_aed")  # one line per protocol
COMPARE_HELP = ("More weights sets measured on the same pairs, each [LABEL=]SET[@WEIGHTS_DIR] (e.g. --compare "
                "joint=demo-joint@runs/joint/weights); repeat for several. Every set, --weights first (labelled by its "
                "name), goes to OUT/LABEL, with OUT/sets.json beside them, which benchmark-report shows side by side.")


class EvaluateSummary(FlowSummary):
    out: str
    pairs: dict[str, int]
    failed: dict[str, int]
    frames: dict[str, int]
    headline: dict[str, dict[str, float | None]]  # protocol -> metric -> mean (fid included)
    networks: Networks
    seconds: float

    @classmethod
    def of(cls, written: EvaluationSummary, out: str, seconds: float) -> EvaluateSummary:
        """The headline of summary.json's content."""
        protocols = written.protocols
        return cls(out=out, pairs={p: block.pairs for p, block in protocols.items()},
                   failed={p: block.pairs_failed for p, block in protocols.items()},
                   frames={p: block.frames for p, block in protocols.items()},
                   headline={p: {**{name: block.metrics[name].mean for name in HEADLINE if name in block.metrics},
                                 "fid": block.distribution.fid}
                             for p, block in protocols.items()},
                   networks=written.networks, seconds=seconds)

    def lines(self) -> list[str]:
        lines = []
        for protocol, pairs in self.pairs.items():
            figures = ", ".join(f"{name} {'-' if value is None else f'{value:.4g}'}"
                                for name, value in self.headline[protocol].items())
            lines.append(f"{protocol}: {pairs} pairs ({self.failed[protocol]} failed), {self.frames[protocol]} "
                         f"frames; {figures}")
        names = self.networks
        lines.append(f"measured by: identity {names.identity}, LPIPS {names.lpips or 'not measured'}, Net3D "
                     f"{names.net3d}, FID {names.inception or 'not measured'}")
        lines.append(f"results: {shown(self.out)} ({self.seconds:.1f} s)")
        return lines

    @property
    def exit_code(self) -> int:
        return 1 if self.pairs and all(self.failed[p] == self.pairs[p] for p in self.pairs) else 0


class SetsSummary(FlowSummary):
    """What an evaluation of several weights sets hands back: each set's summary, by label."""

    out: str
    sets: dict[str, EvaluateSummary]

    def lines(self) -> list[str]:
        lines = []
        for label, summary in self.sets.items():
            lines += [f"set {label}:", *(f"  {line}" for line in summary.lines())]
        return lines + [f"sets: {shown(Path(self.out) / SETS_FILE)}"]

    @property
    def exit_code(self) -> int:
        return 1 if all(summary.exit_code for summary in self.sets.values()) else 0


def check(config: EvaluateConfig, compare: list[str] | None = None, **_) -> None:
    """Setup problems, before any pair: the store and split, the reenacting and measuring networks of every set."""
    check_request(config)
    for reenact in compared_sets(config, compare).values():
        chosen = config.model_copy(update={"reenact": reenact})
        measuring_networks(chosen, Measuring.of(chosen))


def compared_sets(config: EvaluateConfig, compare: list[str] | None) -> dict[str, ReenactConfig]:
    """The sets to measure, by label: `config.reenact`'s (labelled by its name), then each of `compare`."""
    reenact = config.reenact
    sets = weights_choices([reenact.weights, *(compare or [])], reenact.weights_dir)
    return {label: reenact.model_copy(update={"weights": name, "weights_dir": directory})
            for label, (name, directory) in sets.items()}


@flow(name="evaluate", log_prints=True)
def evaluate(config: EvaluateConfig, runner: RunnerConfig = RunnerConfig(),
             compare: list[str] | None = Field(None, description=COMPARE_HELP)) -> EvaluateSummary | SetsSummary:
    """Evaluate a weights set on a test split of a store: the paper's self- and cross-reenactment protocols.

    Per generated frame: CSIM (to the source, and to the driving frame), LPIPS (self: to the ground truth), APD and
    AED (the Net3D's reading of the result vs the driving frame), and with a truth table the pose and expression
    errors against a synthetic world's true parameters; FID/KID per protocol; the linearity of A. Every figure names
    the network that measured it; seeds are fixed and the pair lists are saved. The frames are reenacted in
    memory, never written as videos. Writes to --out: config.json, pairs/, frames.parquet, clips.parquet,
    distribution.parquet, the linearity tables, samples/ and, last, summary.json (benchmark-report reads the
    folder). With --compare, every set is measured on the same pairs."""
    if not compare:
        return _measure(config, runner)
    sets = compared_sets(config, compare)
    out = Path(config.out)
    (out / SETS_FILE).unlink(missing_ok=True)
    summaries = {label: _measure(config.model_copy(update={"out": str(out / label), "reenact": reenact}), runner)
                 for label, reenact in sets.items()}
    EvaluationSets(sets=[SetEntry(label=label, weights=reenact.weights, weights_dir=reenact.weights_dir,
                                  feature_transformer=reenact.feature_transformer)
                         for label, reenact in sets.items()]).write(out)  # last: the comparison is complete
    return SetsSummary(out=str(out), sets=summaries)


def _measure(config: EvaluateConfig, runner: RunnerConfig) -> EvaluateSummary:
    """One set: plan the pairs, measure them on the task runner, write the results folder and publish them."""
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
    rows = [{"protocol": protocol, "pairs": summary.pairs[protocol], "failed": summary.failed[protocol],
             "frames": summary.frames[protocol], **summary.headline[protocol]} for protocol in summary.pairs]
    publish(summary, "evaluate", rows, tuple(dict.fromkeys(key for row in rows for key in row)),
            link=str(Path(config.out) / SUMMARY_FILE))
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

