"""Net3D and identity backends on CPU: images/s, and accuracy against the synthetic world's truth.

    python benchmarks/face3d.py                   # images/s per backend (batches of 16 renders, landmarks given)
    python benchmarks/face3d.py --accuracy 300    # mean |error| per parameter on the 300 fixed held-out renders

Speed: DECA and ArcFace run with random weights (same cost as the real ones); "+dlib" adds finding the landmarks.
Accuracy: the landmark fit from the true projected landmarks (oracle: the fit's own error) and from dlib's landmarks
on the render (the real path: detector + fit); the regressor cropped by the true and by dlib's landmarks. The dlib
columns count the renders dlib finds a face in. `stretch-pucker` is the error of mouth_stretch - lip_pucker, the only
combination of the two that the synthetic head's landmarks (and so its images) determine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.deca import ResnetEncoder  # noqa: E402
from models.face3d import build_face3d  # noqa: E402
from models.face3d.landmark_source import LandmarkSource  # noqa: E402
from models.identity import build_identity  # noqa: E402
from storage.networks import face3d_backend  # noqa: E402
from storage.weights import WeightsRegistry  # noqa: E402
from models.synth.head import EXPRESSION_NAMES  # noqa: E402
from training.face3d_regressor import OUTPUT_NAMES, heldout_renders  # noqa: E402

DISPLAY_NAMES = ("yaw", "pitch", "roll", "jaw", *EXPRESSION_NAMES)


def images_per_second(call, images: np.ndarray, repeats: int = 2) -> float:
    call(images[:2])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        call(images)
    return repeats * len(images) / (time.perf_counter() - started)


def speed(batch: int = 16) -> None:
    images, landmarks, _ = heldout_renders(batch)
    source = LandmarkSource()
    backends = {
        "landmark-fit": build_face3d("landmark-fit", landmarks=source),
        "synth-regressor": face3d_backend(WeightsRegistry(), "synth-regressor", landmarks=source),
        "deca (random weights)": build_face3d("deca", encoder=ResnetEncoder(), landmarks=source),
    }
    print(f"torch threads: {torch.get_num_threads()}; batch {batch} renders of 256x256")
    print(f"{'backend':24s} {'landmarks given':>16s} {'+dlib landmarks':>16s}")
    for name, backend in backends.items():
        given = images_per_second(lambda x: backend.estimate(x, landmarks[:len(x)]), images)
        detected = images_per_second(lambda x: backend.estimate(x), images, repeats=1)
        print(f"{name:24s} {given:14.1f}/s {detected:14.1f}/s")
    from models.arcface import Backbone

    for name, embedder in (("identity: dlib", build_identity("dlib")),
                           ("identity: arcface (random)", build_identity("arcface", backbone=Backbone()))):
        print(f"{name:24s} {images_per_second(embedder.embed, images):14.1f}/s")


def mae_table(columns: dict[str, np.ndarray], truths: dict[str, np.ndarray]) -> None:
    print(f"{'parameter':18s}" + "".join(f"{name:>16s}" for name in columns))
    for index, name in enumerate(DISPLAY_NAMES):
        cells = [np.abs(columns[c][:, index] - truths[c][:, index]).mean() for c in columns]
        print(f"{name:18s}" + "".join(f"{cell:16.3f}" for cell in cells))
    stretch, pucker = 4 + EXPRESSION_NAMES.index("mouth_stretch"), 4 + EXPRESSION_NAMES.index("lip_pucker")
    cells = [np.abs((columns[c][:, stretch] - columns[c][:, pucker]) - (truths[c][:, stretch] - truths[c][:, pucker]))
             .mean() for c in columns]
    print(f"{'stretch-pucker':18s}" + "".join(f"{cell:16.3f}" for cell in cells))


def accuracy(count: int) -> None:
    images, landmarks, targets = heldout_renders(count)
    dlib_landmarks, found = LandmarkSource().resolve(images)
    print(f"{count} held-out renders; dlib finds a face in {found.sum()} ({found.mean():.1%})")
    fit, regressor = build_face3d("landmark-fit"), face3d_backend(WeightsRegistry(), "synth-regressor")
    runs = {
        "fit: true lmk": (fit.estimate(images, landmarks), slice(None)),
        "fit: dlib lmk": (fit.estimate(images[found], dlib_landmarks[found]), found),
        "cnn: true crop": (regressor.estimate(images, landmarks), slice(None)),
        "cnn: dlib crop": (regressor.estimate(images[found], dlib_landmarks[found]), found),
    }
    columns = {name: estimate.to_array()[:, :15] for name, (estimate, _) in runs.items()}
    truths = {name: targets[rows, :15] for name, (_, rows) in runs.items()}
    mae_table(columns, truths)
    for name, (estimate, _rows) in runs.items():
        print(f"{name}: found {int(estimate.found.sum())}/{len(estimate)}")
    shape_error = np.abs(runs["cnn: true crop"][0].shape.numpy() - targets[:, 15:]).mean(axis=0)
    print("regressor shape MAE:", {name: round(float(v), 3) for name, v in zip(OUTPUT_NAMES[15:], shape_error)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--accuracy", type=int, default=0, help="held-out renders to measure accuracy on (0: skip)")
    args = parser.parse_args()
    if args.accuracy:
        accuracy(args.accuracy)
    else:
        speed(args.batch)


if __name__ == "__main__":
    main()
