"""Synthetic driving clips with known landmarks: a rendered head (`models.synth`) placed in a wider frame, at any
size, moving, with an optional hard cut to another scene. For the small-face, tracking and scene-cut tests and for
the tracking tolerance the reenact benchmark measures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.synth.head import sample_identity
from models.synth.motion import clip_motion
from models.synth.render import CAMERA, Camera, render_with_landmarks

FACE_PER_RENDER = 0.49  # the landmarks' extent of a frontal head, as a share of the square render's side


@dataclass
class Scene:
    """One shot: whose head, how it moves, where in the frame, and how tall its face is (pixels)."""

    identity_seed: int
    motion_seed: int
    face_px: float
    centre: tuple[float, float]  # where the head's render is centred, as fractions of the frame's width and height
    drift: tuple[float, float] = (0.0, 0.0)  # how far that centre travels over the shot, frame fractions
    has_face: bool = True  # False: the background alone


def synthetic_clip(scenes: list[tuple[Scene, int]], frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, H, W, 3] and the true landmarks [T, 68, 2] in frame pixels (NaN where no face), one scene
    after another (`(scene, frames)` each; a change of scene is a hard cut)."""
    height, width = frame_size
    frames, truth = [], []
    for scene, count in scenes:
        identity = sample_identity(scene.identity_seed)
        side = int(round(scene.face_px / FACE_PER_RENDER)) // 2 * 2
        camera = Camera(CAMERA.focal * side / CAMERA.size, CAMERA.distance, side)
        params = clip_motion(scene.motion_seed, count)
        heads, points = render_with_landmarks(identity, params, camera)
        background = _background(identity.background, height, width)
        ramp = np.clip(np.minimum(np.arange(side), side - 1 - np.arange(side)) / (0.15 * side), 0, 1)
        alpha = np.minimum.outer(ramp, ramp)[..., None]  # the render's square edge fades into the background
        for t in range(count):
            frame = background.copy()
            if not scene.has_face:
                frames.append(frame)
                truth.append(np.full((68, 2), np.nan, np.float32))
                continue
            progress = t / max(count - 1, 1)
            cx = (scene.centre[0] + scene.drift[0] * progress) * width
            cy = (scene.centre[1] + scene.drift[1] * progress) * height
            x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
            window = frame[y0:y0 + side, x0:x0 + side].astype(np.float32)
            frame[y0:y0 + side, x0:x0 + side] = (window * (1 - alpha) + heads[t] * alpha + 0.5).astype(np.uint8)
            frames.append(frame)
            truth.append(points[t] + np.float32([x0, y0]))
    return np.stack(frames), np.stack(truth).astype(np.float32)


def _background(colours, height: int, width: int) -> np.ndarray:
    """A soft vertical gradient between the identity's two background colours, with a faint diagonal texture."""
    top, bottom = (np.asarray(colour, np.float32) * 255 for colour in colours)
    rows = top + (bottom - top) * np.linspace(0, 1, height, dtype=np.float32)[:, None]
    y, x = np.mgrid[:height, :width].astype(np.float32)
    texture = 6 * np.sin((x + 0.6 * y) / 23.0)[..., None]
    return np.clip(rows[:, None, :] + texture, 0, 255).astype(np.uint8)
