"""The plan of a synthetic world: which people and clips it holds, from one seed, and each clip's true parameters.

A world is a pure function of its `SynthConfig`: identity and clip seeds come from the config's seed, so the same
config always plans the same clips with the same motion, whether they are rendered to video
(`tasks.synthesize`, then preprocessing) or straight into a clip store (`training.demo_recipe`).
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.directions import PARAM_NAMES
from models.synth.head import sample_identity
from models.synth.motion import clip_motion, sweep_motion

RENDER_VERSION = 1  # bump when the same seeds would give different pictures or parameters
FPS = 25.0
SWEEP_KEY = 1_000_000  # in a sweep clip's seed where a talking clip has its video number


class SynthConfig(BaseModel):
    """Everything that decides a synthetic world."""

    model_config = ConfigDict(extra="forbid")

    identities: int = Field(4, ge=1, description="Number of synthetic people.")
    videos_per_identity: int = Field(2, ge=1, description="Videos per person (each video has its own clips).", json_schema_extra={"option": "videos"})
    clips_per_video: int = Field(2, ge=1, description="Clips per video.", json_schema_extra={"option": "clips"})
    min_seconds: float = Field(2.0, gt=0, description="Shortest clip, in seconds.")
    max_seconds: float = Field(8.0, gt=0, description="Longest clip, in seconds.")
    seed: int = Field(0, ge=0, description="Seed of the whole world: identities, clip lengths and motion.")
    sweep_clips_per_identity: int = Field(0, ge=0, description="Sweep clips per person besides the videos: the head still, one parameter sweeping its whole range (each person's sweeps take the next parameters in turn), so two frames differ in that one only.")
    sweep_seconds: float = Field(1.2, gt=0, description="Length of a sweep clip, in seconds.")
    crf: int = Field(20, ge=0, le=51, description="x264 quality (lower is better, larger files).")

    @model_validator(mode="after")
    def _lengths_in_order(self) -> SynthConfig:
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
    sweep: int | None = None  # a sweep clip moves this parameter (an index of PARAM_NAMES) alone

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.identity / self.video / f"{self.clip}.mp4"

    def fingerprint(self, config: SynthConfig) -> str:
        fields = {**asdict(self), "fps": FPS, "crf": config.crf, "version": RENDER_VERSION}
        if self.sweep is None:
            del fields["sweep"]  # the fingerprints of talking clips stay what they were before sweeps existed
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def params(self) -> np.ndarray:
        """The clip's true parameters, float32 [frames, 15] in `PARAM_NAMES` order."""
        if self.sweep is not None:
            return sweep_motion(self.clip_seed, self.frames, self.sweep)
        return clip_motion(self.clip_seed, self.frames, FPS)


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def plan_world(config: SynthConfig) -> list[ClipPlan]:
    """Every clip of the world, in VoxCeleb naming: id00001/<11-character video id>/00001.mp4; a person's sweep
    clips follow as id00001/sweepNNNNNN/00001.mp4, the first moving parameter (person * sweeps) mod 15."""
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
        for k in range(config.sweep_clips_per_identity):
            parameter = (i * config.sweep_clips_per_identity + k) % len(PARAM_NAMES)
            plans.append(ClipPlan(f"id{i + 1:05d}", f"sweep{k + 1:06d}", "00001", identity_seed,
                                  _seed(config.seed, i, SWEEP_KEY, k), max(int(round(config.sweep_seconds * FPS)), 1),
                                  parameter))
    return plans


def truth_columns(plan: ClipPlan) -> dict[str, np.ndarray]:
    """The clip's rows of a truth table, one per frame, as columns: identity, video, clip, frame, the 15
    `PARAM_NAMES`, the clip's seed and the identity's description (`HeadIdentity.as_record`)."""
    params = plan.params()
    count = len(params)
    columns: dict[str, np.ndarray] = {name: np.full(count, value) for name, value in
                                      (("identity", plan.identity), ("video", plan.video), ("clip", plan.clip))}
    columns["frame"] = np.arange(count, dtype=np.int32)
    columns.update({name: params[:, k] for k, name in enumerate(PARAM_NAMES)})
    columns["clip_seed"] = np.full(count, plan.clip_seed)
    columns.update({key: np.full(count, value) for key, value in sample_identity(plan.identity_seed).as_record().items()})
    return columns
