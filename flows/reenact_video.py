"""`reenact-video`: one source face performs a driving video's head pose and expression, written as an mp4."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from pydantic import BaseModel

import tasks  # noqa: F401
from tasks.reenact import (Mode, ReenactConfig, check_request, networks_for, prepare_inputs_task,
                           render_video_task)


class ReenactSummary(BaseModel):
    output: str
    frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    source: str
    driving: str
    source_from_store: bool
    driving_from_store: bool
    frames_without_face: int
    stretches_without_face: list[tuple[int, int]]
    weights: str
    face3d: str
    device: str
    config_hash: str
    seconds_render: float
    seconds: float
    tuning: dict | None = None  # G tuned on the source (tune_steps): steps, seconds, losses before and after
    feature_transformer: str | None = None  # what refined G's features (None: G alone)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


@flow(name="reenact-video", log_prints=True)
def reenact_video(
    driving: str,
    output: str = "outputs/reenacted.mp4",
    source: str | None = None,
    source_frame: int = 0,
    mode: Mode = "cross",
    config: ReenactConfig = ReenactConfig(),
    store: str | None = None,
    cache: bool = False,
) -> ReenactSummary:
    """Reenact `driving` (a video, or `clip:identity/video/clip` of `store`) with `source` (an image, a video's
    `source_frame`, or a store clip's frame); in `self` mode the source is the driving clip's first frame.

    Inputs the store holds are read from it; `cache` writes missing ones into it first.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    check_request(source, source_frame, mode)
    networks_for(config)  # fail fast on a setup problem (unknown set, missing weights) before decoding anything
    face, track = prepare_inputs_task(driving, source, source_frame, mode, config, store, cache)
    logger.info("source %s, driving %s: %d frames at %.2f fps (%d without a readable face)", face.name,
                track.name, len(track), track.fps, int((~track.read).sum()))
    rendered = render_video_task(face, track, output, config)
    summary = ReenactSummary(**rendered, seconds=time.perf_counter() - started)
    logger.info("done: %s", summary.model_dump_json())
    return summary
