"""The driving video as a stream of frames: decode once, follow the face, crop on smoothed boxes, read the face's
parameters, fill and smooth them, each step a stage of a `tasks.stream.Pipeline`.

    frames = decoded(VideoReader(path), batch)                          # DrivingFrame(index, image)
    stages = analysis_stages(tracker, box_sigma=2, param_sigma=1, estimate=networks.estimate, keep_images=False)
    with Pipeline(frames, stages) as analysed:
        for frame in analysed: ...                                      # frame.crop, frame.params, frame.read, ...

The steps are preprocessing's and encoding's (the official crop of `models.detect.align` on boxes smoothed by
preprocessing's Gaussian, the Net3D of encode-dataset, reenactment's gap filling and smoothing), computed as the
frames stream by instead of over a whole clip: the centred filters look a few frames ahead (`models.temporal`'s
stream versions give exactly the whole-clip results), and frames wait in a hold (`HeldItems`: memory, then a
temporary file) only while the values they need have not come yet: within a stretch without a face.

Faces are followed by `models.detect.track.FaceTracker`: detected on key frames and at scene cuts, followed by their
68 landmarks in between, with the video's detection scale (finer levels for small faces) chosen on the way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from models.detect import align
from models.detect.track import FaceTracker
from models.temporal import NothingToFill, fill_gaps_stream, gaussian_smooth_stream
from storage.video import VideoReader
from tasks.preprocess import NoFaceError
from tasks.stream import HeldItems, Stage

CROP_SIZE = 256
ANALYSIS_BATCH = 32  # crops read by the Net3D at once
FIRST_BATCH = 8  # the first Net3D batch: enough for the first frame's smoothing window, small for a quick start
HELD_IN_MEMORY = 48  # frames a look-ahead keeps in memory before it spills to a temporary file

Estimate = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # crops, landmarks -> params, found


class NoReadableFaceError(ValueError):
    """The driving video has faces, but the Net3D could read none of them."""


@dataclass(eq=False)
class DrivingFrame:
    """One driving frame on its way through the stages: each fills its part, and drops what no later one needs."""

    index: int
    image: np.ndarray | None = None  # the full frame [H, W, 3]: until cropped, or to the end for paste-back
    landmarks: np.ndarray | None = None  # the followed face [68, 2] in frame pixels; None: not seen in this frame
    detected: str | None = None  # why the detector ran on this frame (None: the face was followed)
    outline: np.ndarray | None = None  # the landmarks, or where the face is taken to be when unseen (nearest seen)
    box: np.ndarray | None = None  # the smoothed crop square in frame pixels
    crop: np.ndarray | None = None  # [256, 256, 3]
    crop_landmarks: np.ndarray | None = None  # [68, 2] crop pixels, NaN where the face was not seen
    raw: np.ndarray | None = None  # the Net3D's reading [15]
    read: bool = False  # the face was seen and the Net3D read it
    params: np.ndarray | None = None  # what drives A: filled and smoothed [15]
    generated: np.ndarray | None = None  # G's picture of the source with these parameters [256, 256, 3]
    picture: np.ndarray | None = None  # the output frame


def decoded(reader: VideoReader, batch: int) -> Iterator[DrivingFrame]:
    """The video's frames in order, decoded batch by batch (the reader holds one batch)."""
    index = 0
    for frames in reader.batches(batch):
        for image in frames:
            yield DrivingFrame(index, image=image)
            index += 1


def analysis_stages(tracker: FaceTracker, box_sigma: float, param_sigma: float, estimate: Estimate,
                    keep_images: bool, batch: int = ANALYSIS_BATCH) -> list[Stage]:
    """The stages from decoded frames to parameters: follow the face, smoothed boxes, crops, Net3D, parameters."""
    return [Stage("follow faces", lambda frames: follow_faces(frames, tracker)),
            Stage("crop boxes", lambda frames: crop_boxes(frames, box_sigma)),
            Stage("crop", lambda frames: cropped(frames, keep_images)),
            Stage("read faces", lambda frames: read_faces(frames, estimate, batch)),
            Stage("parameters", lambda frames: smooth_parameters(frames, param_sigma))]


def follow_faces(frames: Iterable[DrivingFrame], tracker: FaceTracker) -> Iterator[DrivingFrame]:
    for frame in frames:
        followed = tracker(frame.image)
        frame.landmarks, frame.detected = followed.landmarks, followed.reason
        yield frame


def crop_boxes(frames: Iterable[DrivingFrame], sigma: float) -> Iterator[DrivingFrame]:
    """Each frame's crop square: the official box of its landmarks (of the nearest frame with a face where it has
    none, as preprocessing fills), smoothed over time by preprocessing's centred Gaussian. Looks ahead 4 sigma."""
    held = HeldItems(HELD_IN_MEMORY)
    outlines: deque[np.ndarray] = deque()  # filled landmarks, in order, of the frames not yet given out

    def states() -> Iterator[np.ndarray]:
        for filled, _ in fill_gaps_stream(held.through(frames, lambda frame: frame.landmarks), "nearest"):
            outlines.append(filled)
            yield align.box_state(align.crop_box(filled))

    try:
        for state in gaussian_smooth_stream(states(), sigma):
            frame = held.pop()
            frame.outline = outlines.popleft()
            frame.box = align.box_from_state(state)
            yield frame
    except NothingToFill:
        raise NoFaceError(f"no face detected in any of {held.pushed} frames") from None
    finally:
        held.close()


def cropped(frames: Iterable[DrivingFrame], keep_images: bool) -> Iterator[DrivingFrame]:
    """The official crop at each frame's box, and the face's landmarks in it; the full frame is let go unless
    a later stage pastes into it."""
    for frame in frames:
        frame.crop = align.crop_face(frame.image, frame.box, CROP_SIZE)
        points = frame.landmarks if frame.landmarks is not None else np.full((68, 2), np.nan, np.float32)
        frame.crop_landmarks = align.landmarks_to_crop(points[None], frame.box[None], CROP_SIZE)[0].astype(np.float32)
        if not keep_images:
            frame.image = None
        yield frame


def read_faces(frames: Iterable[DrivingFrame], estimate: Estimate, batch: int) -> Iterator[DrivingFrame]:
    """The Net3D's parameters of the crops, `batch` crops at a time (the first few batches smaller)."""
    for group in batches(frames, batch, first=FIRST_BATCH):
        params, found = estimate(np.stack([frame.crop for frame in group]),
                                 np.stack([frame.crop_landmarks for frame in group]))
        for frame, values, ok in zip(group, params, found):
            frame.raw, frame.read = values, bool(ok) and frame.landmarks is not None
            yield frame


def smooth_parameters(frames: Iterable[DrivingFrame], sigma: float) -> Iterator[DrivingFrame]:
    """What drives A: each frame's reading, or the last good one where the face was not read (the first good one
    before it), smoothed over time by a centred Gaussian. Looks ahead 4 sigma."""
    held = HeldItems(HELD_IN_MEMORY)
    readings = held.through(frames, lambda frame: frame.raw if frame.read else None)
    try:
        filled = (value for value, _ in fill_gaps_stream(readings, "last"))
        for params in gaussian_smooth_stream(filled, sigma):
            frame = held.pop()
            frame.params = params.astype(np.float32)
            yield frame
    except NothingToFill:
        raise NoReadableFaceError(f"no frame of {held.pushed} has a face the Net3D could read") from None
    finally:
        held.close()


def batches(items: Iterable, size: int, first: int | None = None) -> Iterator[list]:
    """Consecutive lists of `size` items (the last one shorter); with `first`, the lists start at that size and
    double up to `size`, so the first items leave early (the first written frame does not wait for a full batch)."""
    group, wanted = [], min(first or size, size)
    for item in items:
        group.append(item)
        if len(group) == wanted:
            yield group
            group, wanted = [], min(2 * wanted, size)
    if group:
        yield group
