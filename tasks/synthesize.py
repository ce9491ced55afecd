"""Rendering one clip of the synthetic world to an H.264 mp4, and the plan of which clips a world holds.

A world is a pure function of its `SynthConfig`: identity and clip seeds come from the config's seed, so the
same config always plans the same clips with the same motion. Each clip's mp4 has a sidecar `<clip>.json` with its
fingerprint (seeds, length, encoding, renderer version); a clip whose mp4 and matching sidecar exist is skipped.
The sidecar is written after the mp4 is in place, so a clip killed half-way is rendered again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import string
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, model_validator

from models.directions import PARAM_NAMES
from models.synth.head import sample_identity
from models.synth.motion import clip_motion
from models.synth.render import render
from storage.files import atomic_path
from storage.video import VideoWriter, write_quiet_audio

RENDER_VERSION = 1  # bump when the same seeds would give different pictures or parameters
FPS = 25.0
BATCH_FRAMES = 32  # frames rendered and piped to ffmpeg at once: a clip is never held whole in memory


class SynthConfig(BaseModel):
    """Everything that decides a synthetic world."""

    identities: int = Field(4, ge=1, description="Number of synthetic people.")
    videos_per_identity: int = Field(2, ge=1, description="Videos per person (each video has its own clips).", json_schema_extra={"option": "videos"})
    clips_per_video: int = Field(2, ge=1, description="Clips per video.", json_schema_extra={"option": "clips"})
    min_seconds: float = Field(2.0, gt=0, description="Shortest clip, in seconds.")
    max_seconds: float = Field(8.0, gt=0, description="Longest clip, in seconds.")
    seed: int = Field(0, ge=0, description="Seed of the whole world: identities, clip lengths and motion.")
    crf: int = Field(20, ge=0, le=51, description="x264 quality (lower is better, larger files).")

    @model_validator(mode="after")
    def _lengths_in_order(self) -> "SynthConfig":
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) < min_seconds ({self.min_seconds})")
        return self


@dataclass(frozen=True)
class ClipPlan:
    """One clip of the world: where it goes and the seeds that decide it."""

    identity: str
    video: str
    clip: str
    identity_seed: int
    clip_seed: int
    frames: int

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.identity / self.video / f"{self.clip}.mp4"

    def fingerprint(self, config: SynthConfig) -> str:
        fields = {**asdict(self), "fps": FPS, "crf": config.crf, "version": RENDER_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def plan_world(config: SynthConfig) -> list[ClipPlan]:
    """Every clip of the world, in VoxCeleb naming: id00001/<11-character video id>/00001.mp4."""
    alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
    plans = []
    for i in range(config.identities):
        identity_seed = _seed(config.seed, i)
        for v in range(config.videos_per_identity):
            rng = np.random.default_rng(_seed(config.seed, i, v))
            video = "".join(rng.choice(alphabet, 11))
            for c in range(config.clips_per_video):
                seconds = rng.uniform(config.min_seconds, config.max_seconds)
                plans.append(ClipPlan(f"id{i + 1:05d}", video, f"{c + 1:05d}", identity_seed,
                                      _seed(config.seed, i, v, c), max(int(round(seconds * FPS)), 1)))
    return plans


def truth_rows(plan: ClipPlan) -> pd.DataFrame:
    """The clip's true parameters: one row per frame, the 15 `PARAM_NAMES` and the identity's description."""
    params = clip_motion(plan.clip_seed, plan.frames, FPS)
    table = pd.DataFrame(params, columns=list(PARAM_NAMES))
    table.insert(0, "frame", np.arange(plan.frames, dtype=np.int32))
    for column, value in reversed([("identity", plan.identity), ("video", plan.video), ("clip", plan.clip)]):
        table.insert(0, column, value)
    table["clip_seed"] = plan.clip_seed
    for key, value in sample_identity(plan.identity_seed).as_record().items():
        table[key] = value
    return table


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
        params = clip_motion(plan.clip_seed, plan.frames, FPS)
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
