"""The crop of the paper's VoxCeleb preprocessing, smoothed over time, and the choice of one face per clip.

Crop geometry (official code, from 68 landmarks): take the landmarks' bounding box; its centre, moved up by a sixth
of the box's larger side, is the crop's centre; the crop is a square of twice that larger side, padded with black
where it leaves the frame, resized to 256x256 bicubic. No rotation.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from models.detect.base import Face

SHIFT_UP = 1 / 6
SCALE = 2.0


def crop_box(landmarks: np.ndarray) -> np.ndarray:
    """Square crop [x0, y0, x1, y1] (frame pixels) for one face's 68 landmarks."""
    (x0, y0), (x1, y1) = landmarks.min(axis=0), landmarks.max(axis=0)
    extent = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - extent * SHIFT_UP
    half = SCALE * extent / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float64)


def smooth_boxes(boxes: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing over time of each box's centre and side (sigma in frames; 0 leaves boxes as they are).

    Preprocessing sees the whole clip, so a centred (zero-lag) filter fits: it removes landmark jitter without the
    lag a causal filter would add behind real head motion. Edges repeat the first/last box.
    """
    boxes = np.asarray(boxes, np.float64)
    if sigma <= 0 or len(boxes) < 2:
        return boxes.copy()
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = boxes[:, 2] - boxes[:, 0]
    centre = gaussian_filter1d(centre, sigma, axis=0, mode="nearest")
    half = gaussian_filter1d(side, sigma, mode="nearest")[:, None] / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def crop_transform(boxes: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per box, the map frame pixel -> crop pixel as `crop = frame * scale + offset` (scale [T], offset [T, 2]).

    Pixel centres line up as when cropping and resizing with cv2.resize: crop pixel j + 0.5 sits at
    x0 + (j + 0.5) / scale in the frame.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = size / (boxes[:, 2] - boxes[:, 0])
    offset = (0.5 - boxes[:, :2]) * scale[:, None] - 0.5
    return scale, offset


def crop_faces(frames: np.ndarray, boxes: np.ndarray, size: int = 256) -> np.ndarray:
    """Crop each frame to its box and resize to size x size (bicubic; black where the box leaves the frame)."""
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        factor = max(1, int(0.5 * (box[2] - box[0]) / size))
        if factor > 1:  # shrinking by more than 2: average pixels first, so large frames do not alias
            frame = cv2.resize(frame, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)
            box = (np.asarray(box, np.float64) + 0.5) / factor - 0.5
        (scale,), (offset,) = crop_transform(box, size)
        matrix = np.array([[scale, 0, offset[0]], [0, scale, offset[1]]], np.float64)
        out[i] = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_CUBIC,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return out


def landmarks_to_crop(landmarks: np.ndarray, boxes: np.ndarray, size: int = 256) -> np.ndarray:
    """Frame-pixel landmarks [T, 68, 2] -> pixel coordinates in each frame's crop."""
    scale, offset = crop_transform(boxes, size)
    return landmarks * scale[:, None, None] + offset[:, None, :]


def select_faces(faces_per_frame: Sequence[Sequence[Face]], min_iou: float = 0.3) -> tuple[list[Face | None], np.ndarray]:
    """One face per frame, the same person throughout: link detections into tracks by overlap, keep the track with
    the largest total area (large and present most of the time). Frames where that track has no detection get None,
    so another person never takes over the crop for a frame. Also returns the number of faces seen per frame."""
    tracks: list[dict[int, Face]] = []
    last_box: list[np.ndarray] = []
    for t, faces in enumerate(faces_per_frame):
        taken: set[int] = set()
        for face in sorted(faces, key=lambda f: -f.area):
            overlaps = [(_iou(face.box, box), k) for k, box in enumerate(last_box) if k not in taken]
            best = max(overlaps, default=(0.0, -1))
            if best[0] >= min_iou:
                k = best[1]
            else:
                tracks.append({})
                last_box.append(face.box)
                k = len(tracks) - 1
            tracks[k][t] = face
            last_box[k] = face.box
            taken.add(k)
    counts = np.array([len(faces) for faces in faces_per_frame], np.int32)
    if not tracks:
        return [None] * len(faces_per_frame), counts
    main = max(tracks, key=lambda track: sum(face.area for face in track.values()))
    return [main.get(t) for t in range(len(faces_per_frame))], counts


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
