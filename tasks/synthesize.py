"""Rendering one clip of the synthetic world to an H.264 mp4 (the world's plan: `models.synth.world`).

A world is a pure function of its `SynthConfig`: identity and clip seeds come from the config's seed, so the
same config always plans the same clips with the same motion. Each clip's mp4 has a sidecar `<clip>.json` with its
fingerprint (seeds, length, encoding, renderer version); a clip whose mp4 and matching sidecar exist is skipped.
The sidecar is written after the mp4 is in place, so a clip killed half-way is rendered again on the next run.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.synth.head import sample_identity
from models.synth.render import render
from models.synth.world import FPS, ClipPlan, SynthConfig, plan_world, truth_columns  # noqa: F401  (the flows' API)
from storage.files import atomic_path
from storage.video import VideoWriter, write_quiet_audio

BATCH_FRAMES = 32  # frames rendered and piped to ffmpeg at once: a clip is never held whole in memory


def truth_rows(plan: ClipPlan) -> pd.DataFrame:
    """The clip's true parameters: one row per frame, the 15 `PARAM_NAMES` and the identity's description."""
    return pd.DataFrame(truth_columns(plan))


def synthesize_clip(plan: ClipPlan, root: str | Path, config: SynthConfig) -> dict:
    """Render one clip to `<root>/<identity>/<video>/<clip>.mp4` (25 fps, quiet audio) unless it is already there.

    Returns a row: status ('rendered' or 'skipped'), frames, seconds, and the clip's truth table under 'truth'.
    """
    started = time.perf_counter()
    path = plan.path(root)
    sidecar = path.with_suffix(".json")
    fingerprint = plan.fingerprint(config)
    done = path.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()).get("fingerprint") == fingerprint
    if not done:
        identity = sample_identity(plan.identity_seed)
        params = plan.params()
        with tempfile.TemporaryDirectory(prefix="synth-audio-") as scratch:
            audio = write_quiet_audio(Path(scratch) / "audio.wav", plan.frames / FPS + 0.5)
            with VideoWriter(path, FPS, (256, 256), audio_from=audio, crf=config.crf) as writer:
                for start in range(0, plan.frames, BATCH_FRAMES):
                    writer.write(render(identity, params[start : start + BATCH_FRAMES]))
        with atomic_path(sidecar) as partial:
            partial.write_text(json.dumps({"fingerprint": fingerprint, **asdict(plan)}, indent=1))
    return {"identity": plan.identity, "video": plan.video, "clip": plan.clip, "path": str(path),
            "status": "skipped" if done else "rendered", "frames": plan.frames,
            "seconds": time.perf_counter() - started, "truth": truth_rows(plan)}


synthesize_clip_task = task(synthesize_clip, name="synthesize-clip", cache_policy=NO_CACHE,
                            task_run_name="{plan.identity}/{plan.video}/{plan.clip}")
