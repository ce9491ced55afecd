"""Per-clip parameter trajectories: smooth head motion, blinks, brow moves and talking, deterministic from a seed.

`clip_motion(seed, frames, fps)` returns float32 [T, 15] in `models.directions.PARAM_NAMES` order (see
`models.synth.head` for units). Pose drifts around a per-clip resting pose with band-limited noise (a few random
sinusoids below 0.6 Hz): yaw within about ±30°, pitch ±15°, roll ±10°. Speech alternates with pauses; while
speaking the jaw opens and closes at a syllable rate of 3-6 Hz with a new depth and lip shape per syllable.
Blinks come at random (about one every 3 s) and last 150-300 ms.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from models.synth.head import EXPRESSION_NAMES

POSE_LIMITS = (32.0, 16.0, 10.0)  # |yaw|, |pitch|, |roll| never exceed these (degrees)
JAW_MAX = 0.35


def band_limited(rng: np.random.Generator, t: np.ndarray, max_hz: float, waves: int = 4) -> np.ndarray:
    """Smooth noise of unit peak-ish amplitude: a few sinusoids with random frequencies below max_hz."""
    freq = rng.uniform(0.05, max_hz, waves)
    phase = rng.uniform(0, 2 * np.pi, waves)
    weight = rng.uniform(0.5, 1.0, waves)
    signal = (weight[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None] + phase[:, None])).sum(0)
    return signal / weight.sum() * 1.6  # the sum rarely reaches its bound; this scales typical peaks to about 1


def clip_motion(seed: int, frames: int, fps: float = 25.0) -> np.ndarray:
    """The 15 parameters [frames, 15] of one clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    params = np.zeros((frames, 15), np.float32)
    exp = {name: params[:, 4 + i] for i, name in enumerate(EXPRESSION_NAMES)}  # views into params

    rest = rng.uniform([-12, -5, -4], [12, 5, 4])
    swing = rng.uniform([8, 4, 3], [20, 10, 6])
    for k in range(3):
        params[:, k] = np.clip(rest[k] + swing[k] * band_limited(rng, t, 0.6), -POSE_LIMITS[k], POSE_LIMITS[k])

    params[:, 3], shapes = _talking(rng, frames, fps)
    exp["smile"][:] = np.clip(rng.uniform(-0.1, 0.4) + 0.35 * band_limited(rng, t, 0.3), -0.5, 1.0)
    exp["mouth_stretch"][:] = np.clip(shapes[:, 0] + 0.1 * band_limited(rng, t, 0.5), -1, 1)
    exp["lip_pucker"][:] = np.clip(shapes[:, 1] + 0.1 * band_limited(rng, t, 0.5), -1, 1)
    exp["upper_lip_raise"][:] = np.clip(0.8 * params[:, 3] / JAW_MAX * shapes[:, 2], -1, 1)
    exp["lower_lip_depress"][:] = np.clip(params[:, 3] / JAW_MAX * shapes[:, 2] + 0.1 * band_limited(rng, t, 0.5), -1, 1)
    blinks = _blinks(rng, frames, fps)
    wink = 0.08 * band_limited(rng, t, 0.4)  # the two eyes never close exactly alike
    exp["eye_close_left"][:] = np.clip(blinks + wink, -0.3, 1)
    exp["eye_close_right"][:] = np.clip(blinks - wink, -0.3, 1)
    exp["brow_raise"][:] = np.clip(0.3 * band_limited(rng, t, 0.4) + _events(rng, frames, fps, 0.15, 0.8), -0.6, 1)
    exp["brow_frown"][:] = np.clip(rng.uniform(-0.2, 0.3) + 0.3 * band_limited(rng, t, 0.3), -0.7, 1)
    exp["cheek_puff"][:] = np.clip(0.25 * band_limited(rng, t, 0.3), -0.5, 0.5)
    exp["mouth_sideways"][:] = np.clip(0.3 * band_limited(rng, t, 0.3), -0.6, 0.6)
    return params


def _talking(rng: np.random.Generator, frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Jaw opening [T] (radians) and per-syllable lip shapes [T, 3] (stretch, pucker, teeth showing)."""
    jaw = np.zeros(frames)
    shapes = np.zeros((frames, 3))
    position = 0.0
    speaking = rng.random() < 0.8
    while position < frames:
        if speaking:  # a phrase of syllables, each an open-close of the jaw
            end = position + rng.uniform(0.8, 3.0) * fps
            while position < min(end, frames):
                length = fps / rng.uniform(3.0, 6.0)
                start, stop = int(position), min(int(position + length), frames)
                phase = (np.arange(start, stop) - position) / length
                jaw[start:stop] = rng.uniform(0.06, 0.30) * np.sin(np.pi * np.clip(phase, 0, 1)) ** 2
                vowel = rng.integers(3)  # 'ee' stretches, 'oo' rounds, 'ah' neither
                shapes[start:stop] = [(0.6, -0.2, 0.5), (-0.3, 0.8, 0.1), (0.0, 0.0, 0.4)][vowel]
                position += length
        else:
            position += rng.uniform(0.3, 1.2) * fps
        speaking = not speaking
    jaw = gaussian_filter1d(jaw, 0.8) + 0.01
    return np.clip(jaw, 0, JAW_MAX), gaussian_filter1d(shapes, 1.5, axis=0)


def _blinks(rng: np.random.Generator, frames: int, fps: float) -> np.ndarray:
    """Eye closure [T] in [0, 1]: blinks at random times (about one every 3 s), each 150-300 ms long."""
    closure = np.zeros(frames)
    when = rng.uniform(0.2, 4.5) * fps
    while when < frames:
        half = rng.uniform(0.075, 0.15) * fps
        ramp = 1 - np.abs(np.arange(frames) - when) / half
        closure = np.maximum(closure, np.clip(ramp * 1.4, 0, 1))
        when += rng.exponential(3.0) * fps + 2 * half
    return closure


def _events(rng: np.random.Generator, frames: int, fps: float, rate_hz: float, height: float) -> np.ndarray:
    """Occasional smooth bumps [T] (a brow flash): Poisson times, 0.3-1 s long."""
    signal = np.zeros(frames)
    count = rng.poisson(rate_hz * frames / fps)
    for centre, width, scale in zip(rng.uniform(0, frames, count), rng.uniform(0.15, 0.5, count) * fps,
                                    rng.uniform(0.5, 1.0, count)):
        signal += height * scale * np.exp(-0.5 * ((np.arange(frames) - centre) / width) ** 2)
    return signal
