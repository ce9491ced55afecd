"""The synthetic world's renderer: frames/s, and how well dlib (the preprocessing's detector) sees its faces.

    python benchmarks/synth.py                  # render speed at 256x256 (batches of 32 frames, 4 identities)
    python benchmarks/synth.py --dlib 200       # also: dlib HOG detection rate and landmark error on 200 frames

Frames for the dlib check come from `clip_motion` (the poses and expressions the dataset flow produces), over
several identities. The landmark error is the mean distance in pixels between dlib's 68 points and the true
projected landmarks, over detected frames; 'in range' means |yaw| <= 35 and |pitch| <= 20 degrees.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.synth.head import sample_identity  # noqa: E402
from models.synth.motion import clip_motion  # noqa: E402
from models.synth.render import render, render_with_landmarks  # noqa: E402


def render_speed(frames: int = 128, batch: int = 32) -> float:
    identities = [sample_identity(seed) for seed in range(4)]
    render(identities[0], clip_motion(0, 4))  # warm-up: caches, torch's first calls
    started = time.perf_counter()
    for start in range(0, frames, batch):
        identity = identities[(start // batch) % len(identities)]
        render(identity, clip_motion(start, batch))
    return frames / (time.perf_counter() - started)


def dlib_check(frames: int, identities: int = 10) -> dict:
    from models.detect import build_detector

    detector = build_detector("dlib")
    per_identity = int(np.ceil(frames / identities))
    found, errors, in_range, found_in_range = 0, [], 0, 0
    misses = []
    for seed in range(identities):
        identity = sample_identity(1000 + seed)
        motion = clip_motion(seed, per_identity * 5)[::5]  # spread over a 5x longer clip
        images, truth = render_with_landmarks(identity, motion)
        for image, true, params in zip(images, truth, motion):
            faces = detector.detect(image[None])[0]
            ok = bool(faces)
            inside = abs(params[0]) <= 35 and abs(params[1]) <= 20
            in_range += inside
            if ok:
                found += 1
                found_in_range += inside
                best = min(faces, key=lambda f: np.linalg.norm(f.landmarks.mean(0) - true.mean(0)))
                errors.append(np.linalg.norm(best.landmarks - true, axis=-1).mean())
            else:
                misses.append((identity.seed, identity.hair_style, *np.round(params[:4], 2)))
    total = per_identity * identities
    return {"frames": total, "detected": found / total, "detected_in_range": found_in_range / max(in_range, 1),
            "landmark_error_px": float(np.mean(errors)) if errors else float("nan"),
            "landmark_error_median_px": float(np.median(errors)) if errors else float("nan"), "misses": misses[:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=128, help="frames to render for the speed figure")
    parser.add_argument("--dlib", type=int, default=0, help="frames to run dlib on (0: skip)")
    args = parser.parse_args()
    import torch

    print(f"render: {render_speed(args.frames):.0f} frames/s at 256x256 ({torch.get_num_threads()} torch threads; "
          "set OMP_NUM_THREADS=1 on a busy machine)")
    if args.dlib:
        result = dlib_check(args.dlib)
        print(f"dlib: detected {result['detected']:.1%} of {result['frames']} frames "
              f"({result['detected_in_range']:.1%} with |yaw|<=35, |pitch|<=20); landmark error "
              f"{result['landmark_error_px']:.2f} px mean, {result['landmark_error_median_px']:.2f} px median")
        for miss in result["misses"]:
            print("  missed (seed, hair, yaw, pitch, roll, jaw):", miss)


if __name__ == "__main__":
    main()
