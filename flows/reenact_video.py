"""`reenact-video`: one source face performs a driving video's head pose and expression, written as an mp4."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from pydantic import Field

from flows.summary import FlowSummary, publish, shown
from tasks.preprocess import detector_for
from tasks.reenact import (Mode, ReenactConfig, RenderedVideo, check_request, networks_for, prepare_source_task,
                           reenact_task)


class ReenactSummary(RenderedVideo, FlowSummary):
    """The rendered video (`RenderedVideo`'s fields), timed from the flow's start."""

    seconds: float
    # seconds_to_first_frame: from the flow's start (the source's preparation included) to the first frame encoded

    @classmethod
    def of(cls, rendered: RenderedVideo, started: float, wall: float) -> ReenactSummary:
        """`rendered`, timed from the flow's start (`started` on the performance counter, `wall` in epoch seconds)."""
        return cls.model_validate({**rendered.model_dump(), "seconds": time.perf_counter() - started,
                                   "seconds_to_first_frame": rendered.first_frame_at - wall})

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        import psutil

        slowest = max(self.stage_seconds, key=self.stage_seconds.get)
        started = psutil.Process().create_time()  # the command's own start: imports and Prefect's API included
        first = f"first frame written {self.first_frame_at - started:.1f} s after the process started; "
        return [f"{self.frames} frames at {self.fps:g} fps, {self.width}x{self.height}"
                f"{', with audio' if self.has_audio else ''}; {self.frames_without_face} without a readable face; "
                f"{self.seconds:.1f} s ({self.frames_per_second:.1f} frames/s on {self.device})",
                f"{first}slowest stage: {slowest} ({self.stage_seconds[slowest]:.1f} s)",
                f"video: {shown(self.output)}"]


def check(source: str | None, source_frame: int, mode: Mode, config: ReenactConfig, **_) -> None:
    """Setup problems, before any frame: source and mode agree, the weights set is known and its files are there,
    the detector is known (its models load meanwhile as well)."""
    check_request(source, source_frame, mode)
    networks_for(config)
    detector_for(config.preprocess_config())


@flow(name="reenact-video", log_prints=True)
def reenact_video(
    driving: str = Field(description="The driving video (a file), or clip:identity/video/clip of --store."),
    output: str = Field("outputs/reenacted.mp4", description="The mp4 to write (H.264, the driving video's fps and audio).", json_schema_extra={"short": "o"}),
    source: str | None = Field(None, description="The face to animate: an image, a video (see --source-frame) or clip:identity/video/clip of --store. Not with --mode self."),
    source_frame: int = Field(0, ge=0, description="Frame of a source video (or store clip) to take the face from."),
    mode: Mode = Field("cross", description="'cross': --source performs the driving video; 'self': the driving clip's first frame is the source (the paper's self-reenactment)."),
    config: ReenactConfig = ReenactConfig(),
    store: str | None = Field(None, description="A clip store to read crops, face parameters and W+ codes from when it holds the inputs."),
    cache: bool = Field(False, description="Write inputs that --store lacks into it (preprocess + encode), then read them from there."),
) -> ReenactSummary:
    """Make the source face perform the driving video's head pose and expression, and write it as an mp4.

    w_reenact = w_source + A(p_driving - p_source), rendered by G (on the GPU when there is one). The driving video
    is read once: decoding, face analysis, the Net3D, G, composing and encoding run at the same time, each in its
    own thread. Frames where the driving face is missed keep the last good parameters; the parameters are smoothed
    over time. Inputs the store holds are read from it (`cache` writes missing ones into it first). Nothing is left
    at the output when the run fails.
    """
    started, wall = time.perf_counter(), time.time()
    logger = get_run_logger()
    check(source, source_frame, mode, config)  # fail fast on a setup problem before decoding anything
    face = prepare_source_task(source, source_frame, config, store, cache) if mode == "cross" else None
    summary = ReenactSummary.of(reenact_task(driving, face, output, config, store, cache), started, wall)
    stages = [{"stage": name, "seconds": round(seconds, 2),
               "frames_per_second": round(summary.frames / seconds, 1) if seconds > 0 else None}
              for name, seconds in summary.stage_seconds.items()]
    logger.info("source %s, driving %s: %d frames at %.2f fps (%d without a readable face); first frame after "
                "%.1f s; stages (overlapped): %s", summary.source, summary.driving, summary.frames, summary.fps,
                summary.frames_without_face, summary.seconds_to_first_frame, ", ".join(f"{s['stage']} {s['seconds']} s" for s in stages))
    publish(summary, "reenact-video", stages, ("stage", "seconds", "frames_per_second"), link=summary.output)
    return summary
