"""The crop of the paper's VoxCeleb preprocessing, smoothed over time, and the choice of one face per clip.

The official crop (`crop_using_landmarks` in the authors' `ffhq_cropping.py`, used by StelaBou/voxceleb_preprocessing
and the reenactment repositories), from 68 landmarks:

* centre: the centre of the landmarks' bounding box, moved up by a sixth of the box's larger side e;
* a square of side 2 e: columns [cx - e, cx + e) and rows [cy - e, cy + e) of the frame;
* where the square leaves the frame, the frame is padded FFHQ-style: reflected (`cv2.BORDER_REFLECT`), the padding
  blurred (Gaussian, sigma 5 px) and faded towards the frame's median colour the further it lies from the frame;
* resized to 256 x 256 with PIL's bicubic filter (which averages when it shrinks); no rotation.

The official script applies it to a pre-cut of each frame (twice VoxCeleb's face box, clipped at the frame's edges),
so its crops meet padding more often than crops of whole frames do.

Two small departures: the official rounds the centre, the side and the upward shift to whole pixels, here boxes
stay fractional (they are smoothed over time, and rounding would bring back a half-pixel jitter; PIL resamples a
fractional box exactly); its median colour is taken over the padded frame after the blur, here before it (the crops
then differ by at most a few grey levels in the padding, and not at all where the box lies inside the frame).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from models.detect.base import Face
from models.temporal import gaussian_smooth

SHIFT_UP = 1 / 6  # of the landmarks' larger extent
CROP_PER_EXTENT = 2.0  # crop side per larger landmark extent
PAD_BLUR_SIGMA = 5.0  # frame pixels


def crop_box(landmarks: np.ndarray) -> np.ndarray:
    """Square crop [..., 4] = x0, y0, x1, y1 for landmarks [..., 68, 2] (frame pixels).

    The box is a slice of the frame as in the official code: x0 is the first column, x1 one past the last.
    """
    landmarks = np.asarray(landmarks, np.float64)
    low, high = landmarks.min(axis=-2), landmarks.max(axis=-2)
    extent = (high - low).max(axis=-1, keepdims=True)
    centre = (low + high) / 2 - np.concatenate([np.zeros_like(extent), extent * SHIFT_UP], axis=-1)
    half = CROP_PER_EXTENT * extent / 2
    return np.concatenate([centre - half, centre + half], axis=-1)


def smooth_boxes(boxes: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Boxes [T, 4] with their centres and sides smoothed over time by a centred Gaussian (sigma in frames).

    Preprocessing sees the whole clip, so a zero-lag filter fits (`models.temporal`): it removes the frame-to-frame
    jitter of the landmarks without lagging behind real head motion. One parameter; 0 leaves the boxes as they are.
    Reenactment smooths the same values as they stream (`box_state`, `models.temporal.gaussian_smooth_stream`).
    """
    boxes = np.asarray(boxes, np.float64)
    if sigma <= 0 or len(boxes) < 2:
        return boxes.copy()
    return box_from_state(gaussian_smooth(box_state(boxes), sigma))


def box_state(boxes: np.ndarray) -> np.ndarray:
    """Square boxes [..., 4] as what their smoothing filters: centre x, centre y and side [..., 3]."""
    boxes = np.asarray(boxes, np.float64)
    return np.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:3] - boxes[..., 0:1]], axis=-1)


def box_from_state(states: np.ndarray) -> np.ndarray:
    """The inverse of `box_state`: centre x, centre y and side [..., 3] -> square boxes [..., 4]."""
    states = np.asarray(states, np.float64)
    half = states[..., 2:3] / 2
    return np.concatenate([states[..., :2] - half, states[..., :2] + half], axis=-1)


def crop_faces(frames: np.ndarray, boxes: np.ndarray, size: int = 256) -> np.ndarray:
    """Each frame [B, H, W, 3] cut to its box [B, 4] and resized to size x size: uint8 [B, size, size, 3]."""
    if len(frames) == 0:
        return np.empty((0, size, size, 3), np.uint8)
    return np.stack([crop_face(frame, box, size) for frame, box in zip(frames, np.asarray(boxes, np.float64))])


def crop_face(frame: np.ndarray, box: np.ndarray, size: int = 256) -> np.ndarray:
    """One frame cut to a (fractional) box, padded the official way where the box leaves it, resized bicubic."""
    if not (np.isfinite(box).all() and box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"not a crop box: {box}")
    x0, y0 = np.floor(box[:2]).astype(int)
    x1, y1 = np.ceil(box[2:]).astype(int)
    region = padded_region(frame, x0, y0, x1, y1)
    within = tuple(float(v) for v in box - [x0, y0, x0, y0])  # the box in the whole-pixel region's pixels
    return np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.BICUBIC, box=within))


def padded_region(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """frame[y0:y1, x0:x1] where the slice may leave the frame: reflected there, blurred and faded to the median."""
    height, width = frame.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return np.ascontiguousarray(frame[y0:y1, x0:x1])
    # the official code pads the whole frame and blurs it; blurring only the slice, widened by the blur's reach on
    # the sides that lie inside the frame, gives the same pixels
    reach = int(4 * PAD_BLUR_SIGMA + 0.5)
    xs = np.arange(x0 - min(reach, max(x0, 0)), x1 + min(reach, max(width - x1, 0)))
    ys = np.arange(y0 - min(reach, max(y0, 0)), y1 + min(reach, max(height - y1, 0)))
    region = frame[_reflect(ys, height)[:, None], _reflect(xs, width)[None, :]].astype(np.float32)
    # how far into the padding each pixel lies, as a fraction of the padding's width (<= 0 inside the frame);
    # a side without padding gets a vanishing width, as in the official code
    left, top = max(-x0, 0), max(-y0, 0)
    right, bottom = max(x1 - width, 0), max(y1 - height, 0)
    depth_x = np.maximum(-xs / max(left, 1e-10), (xs - width + 1) / max(right, 1e-10))
    depth_y = np.maximum(-ys / max(top, 1e-10), (ys - height + 1) / max(bottom, 1e-10))
    depth = np.maximum(depth_x[None, :], depth_y[:, None])[..., None].astype(np.float32)
    blurred = cv2.GaussianBlur(region, (0, 0), PAD_BLUR_SIGMA, borderType=cv2.BORDER_REFLECT)
    region += (blurred - region) * np.clip(depth * 3 + 1, 0, 1)  # blurred in the padding, softening into the frame
    region += (padded_median(frame, x0, y0, x1, y1) - region) * np.clip(depth, 0, 1)  # faded to the median outwards
    inner = region[y0 - ys[0] : y1 - ys[0], x0 - xs[0] : x1 - xs[0]]
    # truncated, as the official code does; the nudge keeps cv2's float blur of a flat area (a hair below its
    # value) from losing a whole grey level to the truncation
    return (inner + 1e-3).astype(np.uint8)


def padded_median(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Per-channel median of the frame reflect-padded to cover the slice, as np.median would give it.

    Each frame pixel counts as often as it appears in the padded frame (reflected bands repeat the frame's edges);
    frames over a quarter megapixel are subsampled evenly, which moves the median by about a grey level.
    """
    height, width = frame.shape[:2]
    columns = np.bincount(_reflect(np.arange(min(x0, 0), max(x1, width)), width), minlength=width)
    rows = np.bincount(_reflect(np.arange(min(y0, 0), max(y1, height)), height), minlength=height)
    step = max(1, int(np.sqrt(height * width / 250_000)))
    weights = np.multiply.outer(rows[::step], columns[::step]).ravel()
    pixels = frame[::step, ::step].reshape(-1, frame.shape[-1])
    middle = (weights.sum() - 1) / 2  # np.median: the mean of the values at ranks floor(middle) and ceil(middle)
    colour = np.empty(pixels.shape[1], np.float32)
    for channel in range(pixels.shape[1]):
        cumulative = np.cumsum(np.bincount(pixels[:, channel], weights=weights, minlength=256))
        lower, upper = np.searchsorted(cumulative, [np.floor(middle), np.ceil(middle)], side="right")
        colour[channel] = (lower + upper) / 2
    return colour


def _reflect(indices: np.ndarray, length: int) -> np.ndarray:
    """Indices mirrored into [0, length) as cv2.BORDER_REFLECT does (edge pixel repeated: cba|abc|cba)."""
    folded = np.mod(indices, 2 * length)
    return np.where(folded < length, folded, 2 * length - 1 - folded)


def crop_transform(boxes: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per box, the map frame pixel -> crop pixel as `crop = frame * scale + offset` (scale [T], offset [T, 2]).

    Pixel centres at integer coordinates in both; the box is a slice (x0 is the left edge of column x0), and crop
    pixel j covers [x0 + j / scale, x0 + (j + 1) / scale) of the frame, as PIL's resize maps them.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = size / (boxes[:, 2] - boxes[:, 0])
    offset = (0.5 - boxes[:, :2]) * scale[:, None] - 0.5
    return scale, offset


def landmarks_to_crop(landmarks: np.ndarray, boxes: np.ndarray, size: int = 256) -> np.ndarray:
    """Frame-pixel landmarks [T, 68, 2] -> pixel coordinates in each frame's crop."""
    scale, offset = crop_transform(boxes, size)
    return landmarks * scale[:, None, None] + offset[:, None, :]


def landmarks_to_frame(landmarks: np.ndarray, boxes: np.ndarray, size: int = 256) -> np.ndarray:
    """The inverse of `landmarks_to_crop`: crop-pixel landmarks [..., 68, 2] of crops cut at `boxes` [..., 4] ->
    frame pixels."""
    boxes = np.asarray(boxes, np.float64)
    scale, offset = crop_transform(boxes.reshape(-1, 4), size)
    shape = np.shape(landmarks)
    points = np.asarray(landmarks, np.float64).reshape(len(scale), -1, 2)
    return ((points - offset[:, None, :]) / scale[:, None, None]).reshape(shape)


FEATHER = 0.12  # of the face's extent: the width of the mask's soft edge, inside the face's outline
FOREHEAD = 0.35  # the brows raised by this share of the chin-to-brow distance close the outline over the forehead


def face_mask(landmarks: np.ndarray, shape: tuple[int, int], feather: float = FEATHER) -> np.ndarray:
    """float32 [H, W] in [0, 1]: the face's outline (the jaw line and the brows raised over the forehead, its convex
    hull) from 68 landmarks in the pixels of an image of `shape`, 1 inside, falling smoothly to exactly 0 at the
    outline over `feather` of the face's extent; 0 everywhere outside."""
    landmarks = np.asarray(landmarks, np.float64)
    up = landmarks[27] - landmarks[8]  # chin to the top of the nose: the face's own up, whatever its roll
    outline = np.concatenate([landmarks[:17], landmarks[17:27] + FOREHEAD * up])
    hull = cv2.convexHull(np.round(outline * 16).astype(np.int32))  # 4 fractional bits: sub-pixel outline
    inside = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(inside, hull, 255, lineType=cv2.LINE_AA, shift=4)
    inside = (inside >= 128).astype(np.uint8)
    if not inside.any():
        return np.zeros(shape, np.float32)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)  # pixels from the outline, 0 outside it
    extent = float((landmarks.max(axis=0) - landmarks.min(axis=0)).max())
    ramp = np.clip(depth / max(feather * extent, 1.0), 0, 1)
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)  # smoothstep: no visible edge where the ramp ends


def paste_face(frame: np.ndarray, crop: np.ndarray, box: np.ndarray, landmarks: np.ndarray,
               feather: float = FEATHER) -> np.ndarray:
    """The inverse of `crop_face`: a (generated) crop [S, S, 3] blended back into `frame` where `box` cut it from.

    The crop is warped into the frame by the inverse of `crop_transform` and blended through `face_mask` of the
    face's `landmarks` (frame pixels): a soft mask inside the face's outline, so hair, background and the crop's
    square edge never show. At the seam (the mask's soft edge) the crop's mean colour is matched to the frame's, so
    lighting differences do not draw a line. Pixels outside the mask are the frame's own, unchanged.
    """
    height, width = frame.shape[:2]
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    result = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return result
    scale, offset = crop_transform(box, crop.shape[0])
    # crop pixel -> frame pixel, then into the region's own pixels
    to_region = np.array([[1, 0, -offset[0, 0]], [0, 1, -offset[0, 1]]], np.float64) / scale[0] - [[0, 0, x0], [0, 0, y0]]
    warped = cv2.warpAffine(crop, to_region, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    alpha = face_mask(np.asarray(landmarks, np.float64) - [x0, y0], (y1 - y0, x1 - x0), feather)
    if not alpha.any():
        return result
    region = frame[y0:y1, x0:x1].astype(np.float32)
    seam = (alpha > 0) & (alpha < 1)
    if seam.any():
        warped += region[seam].mean(axis=0) - warped[seam].mean(axis=0)
    alpha = alpha[..., None]
    blended = (region * (1 - alpha) + np.clip(warped, 0, 255) * alpha + 0.5).astype(np.uint8)
    covered = alpha[..., 0] > 0
    result[y0:y1, x0:x1][covered] = blended[covered]
    return result


def select_faces(faces_per_frame: Sequence[Sequence[Face]], min_iou: float = 0.3) -> tuple[list[Face | None], np.ndarray]:
    """One face per frame, the same person throughout, and the number of faces seen in each frame.

    Detections are linked into tracks (each face joins the track whose latest box overlaps it most, at IoU >=
    `min_iou`, larger faces choosing first); the track with the largest summed area, i.e. large and present most of
    the time, is the clip's face. Frames where that track has no detection get None, so a second person never takes
    over the crop for a frame; the caller fills them from the nearest frame with the face.
    """
    tracks: list[dict[int, Face]] = []
    latest: list[np.ndarray] = []
    for t, faces in enumerate(faces_per_frame):
        taken: set[int] = set()
        for face in sorted(faces, key=lambda f: -f.area):
            best_iou, best = max(((box_iou(face.box, box), k) for k, box in enumerate(latest) if k not in taken),
                                 default=(0.0, -1))
            if best_iou < min_iou:
                tracks.append({})
                latest.append(face.box)
                best = len(tracks) - 1
            tracks[best][t] = face
            latest[best] = face.box
            taken.add(best)
    counts = np.array([len(faces) for faces in faces_per_frame], np.int32)
    if not tracks:
        return [None] * len(faces_per_frame), counts
    main = max(tracks, key=lambda track: sum(face.area for face in track.values()))
    return [main.get(t) for t in range(len(faces_per_frame))], counts


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes x0, y0, x1, y1."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
