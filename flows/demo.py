"""`demo`: the README's main job on the embedded defaults, with no download.

    make a small synthetic world  ->  preprocess it into a Zarr store  ->  reenact with the bundled `demo` weights:
        1. a synthetic source driven by a synthetic person of another identity   (videos/synthetic.mp4)
        2. a bundled real photo driven by the same synthetic person               (videos/photo.mp4)
        3. the same, with a copy of G first tuned on the photo (the official
           inference's optimize_generator; on pixels alone, as AlexNet cannot ship) (videos/photo-tuned.mp4)

The world's seed differs from the one the demo weights were trained on (training/configs/demo-*.yaml), so the
people in it are new to the networks. Each video is a grid: source | driving | result. Re-runs reuse what exists.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from pydantic import Field

from flows.make_synthetic_dataset import make_synthetic_dataset
from flows.preprocess_dataset import preprocess_dataset
from flows.reenact_video import reenact_video
from flows.summary import FlowSummary, publish, shown
from storage.settings import DEMO_PHOTO
from storage.store import ClipKey, ClipStore
from tasks.preprocess import PreprocessConfig
from tasks.reenact import CLIP_PREFIX, ReenactConfig
from tasks.synthesize import SynthConfig

DEMO_WORLD = SynthConfig(identities=3, videos_per_identity=1, clips_per_video=1, min_seconds=3, max_seconds=3,
                         seed=7)  # the demo weights were trained on the world of seed 1
DEMO_TUNING = {"tune_steps": 100, "tune_lpips_weight": 0.0}  # pixels alone (AlexNet cannot ship); a few seconds


class DemoSummary(FlowSummary):
    world: str
    truth: str
    store: str
    videos: dict[str, str]  # what each video shows -> its path
    frames: int
    seconds: float

    def lines(self) -> list[str]:
        return [f"{len(self.videos)} videos, {self.frames} frames in {self.seconds:.1f} s",
                f"world:  {shown(self.world)} (true parameters: {Path(self.truth).name})",
                f"store:  {shown(self.store)}",
                *(f"video:  {shown(video)}  ({label}; source | driving | result)" for label, video in self.videos.items())]


@flow(name="demo", log_prints=True)
def demo(
    out: str = Field("outputs/demo", description="Folder for the synthetic world, its store and the videos."),
    weights: str = Field("demo", description="Weights set to reenact with (the bundled 'demo' set by default)."),
    photo: str = Field(str(DEMO_PHOTO), description="The real photo to reenact (a bundled one by default)."),
) -> DemoSummary:
    """The main job on the embedded defaults: make synthetic demo data, preprocess it, and reenact a synthetic
    source and a real photo with a synthetic driving clip (local Prefect, local Zarr, the bundled demo weights)."""
    started = time.perf_counter()
    root = Path(out)
    world = make_synthetic_dataset(out=str(root / "synthetic"), config=DEMO_WORLD)
    store = str(root / "synthetic.zarr")
    preprocess_dataset(input=world.out, store=store, config=PreprocessConfig(fps=25))
    source, driving = _two_people(ClipStore.open(store, create=False))
    config = ReenactConfig(weights=weights, grid=True)
    tuned = config.model_copy(update=DEMO_TUNING)
    jobs = {"synthetic source, synthetic driving": (f"{CLIP_PREFIX}{source}", "synthetic.mp4", config),
            "real photo, synthetic driving": (photo, "photo.mp4", config),
            "real photo, G tuned on it, synthetic driving": (photo, "photo-tuned.mp4", tuned)}
    videos, frames = {}, 0
    for label, (source_input, name, job_config) in jobs.items():
        result = reenact_video(driving=f"{CLIP_PREFIX}{driving}", source=source_input, config=job_config,
                               store=store, output=str(root / "videos" / name))
        videos[label], frames = result.output, frames + result.frames
    summary = DemoSummary(world=world.out, truth=world.truth, store=store, videos=videos, frames=frames,
                          seconds=time.perf_counter() - started)
    publish(summary, "demo", [{"video": label, "path": path} for label, path in videos.items()], ("video", "path"))
    return summary


def _two_people(store: ClipStore) -> tuple[ClipKey, ClipKey]:
    """The first clips of the store's first two identities: the source and the driving person."""
    firsts: dict[str, ClipKey] = {}
    for key in store.clips():
        firsts.setdefault(key.identity, key)
    if len(firsts) < 2:
        raise ValueError(f"the demo needs clips of two people; {store.root} has {len(firsts)}")
    first, second = list(firsts.values())[:2]
    return first, second
