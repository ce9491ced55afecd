"""Per-clip parameter trajectories: smooth head motion, blinks, brow moves and talking, deterministic from a seed.

`clip_motion(seed, frames, fps)` returns float32 [T, 15] in `models.directions.PARAM_NAMES` order (see
`models.synth.head` for units). Pose drifts around a per-clip resting pose with band-limited noise (a few random
sinusoids below 0.6 Hz): yaw within about ±30°, pitch ±15°, roll ±10°. Speech alternates with pauses; while
speaking the jaw opens and closes at a syllable rate of 3-6 Hz with a new depth and lip shape per syllable.
Blinks come at random (about one every 3 s) and last 150-300 ms.

Talking moves the face little: one standard deviation of an expression moves the landmarks by 0.3-2.5 px of the
256 crop (the jaw 5 px, yaw 18 px). `sweep_motion(seed, frames, parameter)` is a clip of another kind: the head
holds still at a resting pose with a neutral face while one parameter sweeps its whole range (`PARAM_LIMITS`)
and back, so two of its frames differ in that one parameter only, by up to 8-15 px for an expression.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from models.synth.head import EXPRESSION_NAMES

POSE_LIMITS = (32.0, 16.0, 10.0)  # |yaw|, |pitch|, |roll| never exceed these (degrees)
JAW_MAX = 0.35
JAW_RANGE = (0.0, JAW_MAX)
EXPRESSION_RANGES = {  # the bounds clips give each expression
    "smile": (-0.5, 1.0), "mouth_stretch": (-1.0, 1.0), "lip_pucker": (-1.0, 1.0), "upper_lip_raise": (-1.0, 1.0),
    "lower_lip_depress": (-1.0, 1.0), "eye_close_left": (-0.3, 1.0), "eye_close_right": (-0.3, 1.0),
    "brow_raise": (-0.6, 1.0), "brow_frown": (-0.7, 1.0), "cheek_puff": (-0.5, 0.5), "mouth_sideways": (-0.6, 0.6),
}
PARAM_LIMITS = (*((-limit, limit) for limit in POSE_LIMITS), JAW_RANGE,
                *(EXPRESSION_RANGES[name] for name in EXPRESSION_NAMES))  # [15] (low, high) in PARAM_NAMES order


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


def sweep_motion(seed: int, frames: int, parameter: int) -> np.ndarray:
    """The 15 parameters [frames, 15] of a sweep clip: a resting pose (yaw within ±12°, pitch ±5°, roll ±4°), the
    jaw nearly closed and the other expressions near neutral, all still, while `parameter` (an index of
    `PARAM_NAMES`) goes from a random point of its `PARAM_LIMITS` over the whole range and back (a cosine)."""
    rng = np.random.default_rng(seed)
    params = np.zeros((frames, 15), np.float32)
    params[:, :3] = rng.uniform([-12, -5, -4], [12, 5, 4])
    params[:, 3] = rng.uniform(0.0, 0.05)
    params[:, 4:] = rng.normal(0.0, 0.05, len(EXPRESSION_NAMES))
    low, high = PARAM_LIMITS[parameter]
    phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(frames) / max(frames, 1)
    params[:, parameter] = low + (high - low) * (1 - np.cos(phase)) / 2
    return np.clip(params, *np.array(PARAM_LIMITS, np.float32).T)
