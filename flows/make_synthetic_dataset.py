"""`make-synthetic-dataset`: a VoxCeleb-layout world of rendered heads whose true pose and expression are known.

Writes `<out>/<identity>/<video>/<clip>.mp4` (H.264, 256x256, 25 fps, a quiet audio track) and `<out>/truth.parquet`
with one row per frame: identity, video, clip, frame, the 15 parameters by `PARAM_NAMES`, the clip's seed and the
identity's seed, shape and colours. Re-runs skip clips already rendered with the same settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, unmapped
from pydantic import Field

from storage.files import atomic_path
from flows.options import POSITIONAL
from flows.summary import FlowSummary, publish, shown
from tasks.progress import collect_rows
from tasks.runners import RunnerConfig
from tasks.synthesize import ClipPlan, SynthConfig, plan_world, synthesize_clip_task

TRUTH_FILE = "truth.parquet"


class SynthSummary(FlowSummary):
    out: str
    truth: str
    clips: int
    rendered: int
    skipped: int
    frames: int
    seconds: float

    def lines(self) -> list[str]:
        return [f"{self.clips} clips: {self.rendered} rendered, {self.skipped} skipped; {self.frames} frames in "
                f"{self.seconds:.1f} s", f"videos: {shown(self.out)}", f"truth:  {shown(self.truth)}"]


@flow(name="make-synthetic-dataset", log_prints=True)
def make_synthetic_dataset(
    out: str = Field("outputs/synthetic", description="Directory to write the world to (VoxCeleb layout).", json_schema_extra=POSITIONAL),
    config: SynthConfig = SynthConfig(),
    runner: RunnerConfig = RunnerConfig(),
) -> SynthSummary:
    """Render a synthetic VoxCeleb-style dataset of parametric heads whose pose and expression are known.

    Writes <out>/<identity>/<video>/<clip>.mp4 (256x256 H.264, 25 fps, quiet audio) and <out>/truth.parquet: one
    row per frame with yaw, pitch, roll (degrees), jaw (radians) and the 11 expression coefficients. Re-running
    skips finished clips; feed the directory to preprocess-dataset like real footage. The truth table is written
    atomically once every clip is rendered.
    """
    started = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    # an ffmpeg killed mid-clip leaves its hidden partial file; it would otherwise look like a clip to a reader
    leftovers = list(root.glob("*/*/.*.partial.mp4"))
    for partial in leftovers:
        partial.unlink()
    plans = plan_world(config)
    logger = get_run_logger()
    logger.info("%d clips -> %s%s", len(plans), root,
                f" (removed {len(leftovers)} partial files of an interrupted run)" if leftovers else "")
    rows = _render_clips.with_options(task_runner=runner.build())(plans, str(root), config)
    truth = pd.concat([row.pop("truth") for row in rows], ignore_index=True)
    truth = truth.sort_values(["identity", "video", "clip", "frame"], ignore_index=True)
    truth_path = root / TRUTH_FILE
    with atomic_path(truth_path) as partial:
        truth.to_parquet(partial, index=False)
    summary = SynthSummary(
        out=str(root), truth=str(truth_path), clips=len(rows),
        rendered=sum(r["status"] == "rendered" for r in rows), skipped=sum(r["status"] == "skipped" for r in rows),
        frames=len(truth), seconds=time.perf_counter() - started,
    )
    publish(summary, "make-synthetic-dataset", rows, ("identity", "video", "clip", "status", "frames"))
    return summary


@flow(name="synthesize-clips")
def _render_clips(plans: list[ClipPlan], root: str, config: SynthConfig) -> list[dict]:
    """Fan the clips out on the chosen task runner."""
    futures = synthesize_clip_task.map(plans, root=unmapped(root), config=unmapped(config))
    return collect_rows(futures, "clips")
