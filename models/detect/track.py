"""Following one face through a video: the detector on key frames, the 68-point predictor in between.

Detecting every frame is what analysis of a driving video spent its time on (dlib's HOG: ~30-60 ms a 720p frame on
a CPU core, the predictor ~1-3 ms). Between key frames the chosen face is followed instead: the predictor starts
from the box a HOG detection would give for the previous frame's landmarks (`hog_box_from_landmarks`), then once
more from the box of its own answer. On a face both passes agree; when the landmarks slide off the face (a fast turn,
an occlusion, the face leaving) the second pass moves away from the first, and the frame is re-detected.

The detector runs (`FollowedFace.reason`):
  * "start" / "lost": no face is followed: every frame, over the whole frame, until one is found;
  * "schedule": every `detect_every` frames, in a region around the followed face (cheap; the whole frame if the
    face is not in it): the landmarks are re-anchored to a detection, as per-frame detection would place them;
  * "degraded": when the two predictor passes disagree, or the face's size jumps;
  * "cut": at a scene cut (a jump of the frame's 16 px thumbnail), where the old box means nothing.

Which face: at a cut or after a loss the largest detection; otherwise the one overlapping the followed box (IoU >=
0.3), or none (the frame has no face, and the face is lost). When the whole frame shows no face at the working scale,
finer levels are searched (`detection_scales`, at most once per `fine_search_every` frames while none is found),
and the clip continues at the level where its face was found (`scale`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from models.detect.align import box_iou
from models.detect.base import Face, FaceDetector, detection_scales
from models.detect.landmarks import LandmarkPredictor, hog_box_from_landmarks

THUMBNAIL = 16  # side of the colour thumbnail compared between frames to find scene cuts
# a cut: the thumbnail's mean absolute change (grey levels) above this, and above CUT_PER_MOTION times its recent
# mean (so that a shaky camera does not cut). Measured: motion in the demo clips 2-6, cuts between two synthetic
# people on like backgrounds from 21, between demo clips 50
CUT_DIFFERENCE = 15.0
CUT_PER_MOTION = 3.0
MOTION_MEMORY = 25  # frames of recent change remembered
DRIFT_LIMIT = 0.03  # mean distance of the two predictor passes, in face extents, above which landmarks degrade
SIZE_JUMP = 1.25  # a face that grows or shrinks by more than this between two frames is re-detected
MIN_IOU = 0.3
REGION_PER_EXTENT = 3.0  # the key-frame search region: a square of this many face extents around the face
REGION_FACE_PX = 100.0  # the face's extent in the region's search image (HOG's window is 80 px)


@dataclass(frozen=True)
class FollowedFace:
    """One frame's answer: the chosen face's landmarks (None: not seen) and whether and why the detector ran."""

    landmarks: np.ndarray | None  # float32 [68, 2] frame pixels
    reason: str | None  # why the detector ran on this frame (None: followed by the predictor alone)
    faces: int  # faces the detector found in the frame (0 where it did not run over the whole frame)


class FaceTracker:
    """One video's face, frame after frame (`__call__`); `scale` is the detection scale where it was found."""

    def __init__(self, detector: FaceDetector, detect_every: int = 8, fine_search_every: int = 25,
                 predictor: LandmarkPredictor | None = None):
        if detect_every < 1:
            raise ValueError(f"detect_every must be 1 or more, got {detect_every}")
        self.detector = detector
        self.detect_every = detect_every
        self.fine_search_every = fine_search_every
        self.predictor = predictor or getattr(detector, "predictor", None) or LandmarkPredictor()
        self.scales: list[float] | None = None  # detection levels of this video's frame size
        self.level = 0  # the level the face was found at: routine detections run there
        self.found_scale: float | None = None
        self.detections = {"start": 0, "lost": 0, "schedule": 0, "degraded": 0, "cut": 0}
        self._landmarks: np.ndarray | None = None  # the followed face in the previous frame
        self._last_box: np.ndarray | None = None  # where the face was last seen, kept while it is lost
        self._since_detection = 0
        self._thumbnail: np.ndarray | None = None
        self._motion: deque[float] = deque(maxlen=MOTION_MEMORY)
        self._fine_search_due = 0  # frame index from which the finer levels may be searched again
        self._index = -1

    @property
    def scale(self) -> float | None:
        """The detection scale (a factor of the frame's size) at which this video's face was found."""
        return self.found_scale

    def __call__(self, frame: np.ndarray) -> FollowedFace:
        self._index += 1
        frame = np.ascontiguousarray(frame)
        if self.scales is None:
            self.scales = detection_scales(*frame.shape[:2], self.detector.max_side)
        cut = self._is_cut(frame)
        self._since_detection += 1
        if self._landmarks is None:
            reason = "start" if self._last_box is None else "lost"
        elif cut:
            reason = "cut"
        elif self._since_detection >= self.detect_every:
            reason = "schedule"
        else:
            followed = self._follow(frame, self._landmarks)
            if followed is not None:
                self._landmarks = followed
                return FollowedFace(followed, None, 0)
            reason = "degraded"
        return self._detect(frame, reason)

    def _is_cut(self, frame: np.ndarray) -> bool:
        step = max(1, min(frame.shape[:2]) // (4 * THUMBNAIL))  # every pixel of a 720p frame would cost ~8 ms
        thumbnail = cv2.resize(frame[::step, ::step], (THUMBNAIL, THUMBNAIL),
                               interpolation=cv2.INTER_AREA).astype(np.float32)
        previous, self._thumbnail = self._thumbnail, thumbnail
        if previous is None:
            return False
        change = float(np.abs(thumbnail - previous).mean())
        usual = float(np.mean(self._motion)) if self._motion else 0.0
        self._motion.append(change)
        return change > CUT_DIFFERENCE and change > CUT_PER_MOTION * usual

    def _follow(self, frame: np.ndarray, previous: np.ndarray) -> np.ndarray | None:
        """The face's landmarks in this frame from the previous frame's, or None where they degrade."""
        first = self.predictor(frame, hog_box_from_landmarks(previous))
        second = self.predictor(frame, hog_box_from_landmarks(first))
        extent = _extent(second)
        drift = np.linalg.norm(second - first, axis=1).mean() / max(extent, 1e-6)
        jump = extent / max(_extent(previous), 1e-6)
        inside = _inside(second.mean(axis=0), frame.shape)
        if drift > DRIFT_LIMIT or not 1 / SIZE_JUMP < jump < SIZE_JUMP or not inside:
            return None
        return second

    def _detect(self, frame: np.ndarray, reason: str) -> FollowedFace:
        self.detections[reason] += 1
        self._since_detection = 0
        expected = hog_box_from_landmarks(self._landmarks) if self._landmarks is not None else self._last_box
        face, count = None, 0
        if reason in ("schedule", "degraded"):
            face = self._choose(self._search_region(frame, expected), expected, reason)
        if face is None:
            faces = self._search_frame(frame)
            count = len(faces)
            face = self._choose(faces, expected, reason)
        self._landmarks = None if face is None else face.landmarks
        if face is not None:
            self._last_box = face.box
        return FollowedFace(self._landmarks, reason, count)

    def _choose(self, faces: list[Face], expected: np.ndarray | None, reason: str) -> Face | None:
        """The followed face among detections: the best overlap with where it was expected; the largest when
        nothing is expected (a start, a cut) or when the face was lost and nobody is where it was."""
        if not faces:
            return None
        if expected is not None and reason != "cut":
            overlap, best = max((box_iou(face.box, expected), index) for index, face in enumerate(faces))
            if overlap >= MIN_IOU:
                return faces[best]
            if reason != "lost":
                return None
        return max(faces, key=lambda face: face.area)

    def _search_region(self, frame: np.ndarray, box: np.ndarray) -> list[Face]:
        """Detections in a square around `box`, searched at the scale that makes the face ~100 px."""
        extent = max(box[2] - box[0], box[3] - box[1])
        centre = (box[:2] + box[2:]) / 2
        half = REGION_PER_EXTENT * extent / 2
        scale = float(np.clip(REGION_FACE_PX / max(extent, 1e-6), 0.05, self.scales[-1]))
        return self.detector.detect_region(frame, np.r_[centre - half, centre + half], scale)

    def _search_frame(self, frame: np.ndarray) -> list[Face]:
        """Detections over the whole frame at the clip's level; finer levels when none is found and a fine
        search is due (then the clip stays at the level that found its face)."""
        faces = self.detector.detect(frame[None], self.scales[self.level])[0]
        if faces or self._index < self._fine_search_due:
            if faces and self.found_scale is None:
                self.found_scale = self.scales[self.level]
            return faces
        self._fine_search_due = self._index + self.fine_search_every
        for level in range(self.level + 1, len(self.scales)):
            faces = self.detector.detect(frame[None], self.scales[level])[0]
            if faces:
                self.level = level
                self.found_scale = self.scales[level]
                return faces
        return []


def _extent(landmarks: np.ndarray) -> float:
    return float((landmarks.max(axis=0) - landmarks.min(axis=0)).max())


def _inside(point: np.ndarray, shape: tuple[int, ...]) -> bool:
    return 0 <= point[0] < shape[1] and 0 <= point[1] < shape[0]
