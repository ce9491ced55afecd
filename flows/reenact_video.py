"""`reenact-video`: one source face performs a driving video's head pose and expression, written as an mp4."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from pydantic import BaseModel

import tasks  # noqa: F401
from tasks.reenact import Mode, ReenactConfig, check_request, networks_for, prepare_source_task, reenact_task


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
    seconds_to_first_frame: float  # from the flow's start to the first frame handed to the encoder
    stage_seconds: dict[str, float]  # per stage of the stream: seconds in its own work (they overlap)
    face_scale: float | None = None  # detection scale of the driving face (finer than the working one: small)
    source_face_scale: float | None = None
    detections: dict[str, int] | None = None  # frames where the detector ran on the driving video, by reason
    tuning: dict | None = None  # G tuned on the source (tune_steps): steps, seconds, losses before and after
    feature_transformer: str | None = None  # what refined G's features (None: G alone)
    first_frame_at: float | None = None  # wall-clock time (epoch seconds) of the first written frame

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

    The driving video is read once, its stages overlapped (decode, follow the face, crop, Net3D, G, compose,
    encode); inputs the store holds are read from it; `cache` writes missing ones into it first.
    """
    started, wall = time.perf_counter(), time.time()
    logger = get_run_logger()
    check_request(source, source_frame, mode)
    networks_for(config)  # fail fast on a setup problem (unknown set, missing weights) before decoding anything
    face = prepare_source_task(source, source_frame, config, store, cache) if mode == "cross" else None
    rendered = reenact_task(driving, face, output, config, store, cache)
    first = rendered["first_frame_at"] - wall
    summary = ReenactSummary(**{**rendered, "seconds_to_first_frame": first}, seconds=time.perf_counter() - started)
    per_stage = ", ".join(f"{name} {seconds:.1f} s ({summary.frames / seconds:.0f} frames/s)" if seconds > 0 else name
                          for name, seconds in summary.stage_seconds.items())
    logger.info("source %s, driving %s: %d frames at %.2f fps (%d without a readable face); %.1f frames/s, first "
                "frame after %.1f s; stages (overlapped): %s", summary.source, summary.driving, summary.frames,
                summary.fps, summary.frames_without_face, summary.frames_per_second, first, per_stage)
    logger.info("done: %s", summary.model_dump_json())
    return summary
