"""The synthetic head: seeds decide everything, DECA's angle convention, the image agrees with the landmarks, and
dlib (the preprocessing's detector) finds the faces."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from models.detect.align import crop_box
from models.directions import NUM_PARAMS
from models.flame import euler_from_axis_angle
from models.synth.head import (
    EXPRESSION_NAMES,
    LANDMARKS_3D,
    LEFT_EYE,
    RIGHT_EYE,
    landmarks_3d,
    mean_identity,
    rotation_matrix,
    sample_identity,
)
from models.synth.motion import JAW_MAX, PARAM_LIMITS, POSE_LIMITS, clip_motion, sweep_motion
from models.synth.render import CAMERA, project, render, render_with_landmarks
from models.synth.world import SynthConfig, plan_world


def _params(yaw=0.0, pitch=0.0, roll=0.0, jaw=0.0, **expressions) -> np.ndarray:
    vector = np.zeros(NUM_PARAMS, np.float32)
    vector[:4] = yaw, pitch, roll, jaw
    for name, value in expressions.items():
        vector[4 + EXPRESSION_NAMES.index(name)] = value
    return vector


def test_layout_matches_deca_parameters():
    assert len(EXPRESSION_NAMES) == 11 and len(set(EXPRESSION_NAMES)) == 11
    assert LANDMARKS_3D.shape == (68, 3) and LANDMARKS_3D.dtype == np.float32
    assert clip_motion(0, 10).shape == (10, NUM_PARAMS)


def test_seeds_decide_identity_motion_and_pixels():
    assert sample_identity(7) == sample_identity(7)
    assert sample_identity(7) != sample_identity(8)
    np.testing.assert_array_equal(clip_motion(3, 50), clip_motion(3, 50))
    assert not np.allclose(clip_motion(3, 50), clip_motion(4, 50))
    params = clip_motion(3, 4)
    np.testing.assert_array_equal(render(sample_identity(7), params), render(sample_identity(7), params))


def test_rotation_reads_back_through_decas_euler_convention():
    rng = np.random.default_rng(0)
    angles = rng.uniform([-60, -40, -40], [60, 40, 40], (50, 3))
    rotations = rotation_matrix(*angles.T).astype(np.float64)
    axis_angle = np.stack([cv2.Rodrigues(r)[0][:, 0] for r in rotations])
    read = euler_from_axis_angle(torch.from_numpy(axis_angle)).numpy()
    np.testing.assert_allclose(read, angles, atol=1e-3)


def test_projected_landmarks_give_back_the_pose():
    """solvePnP of the true 2D landmarks against the 3D ones, with the documented pinhole, recovers the angles."""
    identity = sample_identity(11)
    camera = np.array([[CAMERA.focal, 0, CAMERA.centre], [0, CAMERA.focal, CAMERA.centre], [0, 0, 1]])
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV's camera looks along +z with y down; ours looks along -z with y up
    for pose in ([25, -8, 5], [-30, 12, -9], [5, 15, 0]):
        params = _params(*pose, jaw=0.2, smile=0.5)[None]
        points = landmarks_3d(identity, params[:, 3], params[:, 4:])[0].astype(np.float64)
        _, pixels = render_with_landmarks(identity, params)
        ok, rvec, _ = cv2.solvePnP(points, pixels[0].astype(np.float64), camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
        assert ok
        rotation = flip @ cv2.Rodrigues(rvec)[0]
        read = euler_from_axis_angle(torch.from_numpy(cv2.Rodrigues(rotation)[0][:, 0])).numpy()
        np.testing.assert_allclose(read, pose, atol=0.5)


def test_pupils_are_dark_where_the_eye_landmarks_say():
    images, pixels = render_with_landmarks(mean_identity(), np.stack([_params(), _params(yaw=20, pitch=-8)]))
    for image, points in zip(images, pixels):
        for eye in (RIGHT_EYE, LEFT_EYE):
            x, y = np.round(points[eye].mean(0)).astype(int)
            assert image[y - 1 : y + 2, x - 1 : x + 2].mean() < 50
            # and the white of the eye lies between the pupil and the corners
            cx, cy = np.round(points[eye[0]] * 0.7 + points[eye].mean(0) * 0.3).astype(int)
            assert image[cy, cx].mean() > image[y, x].mean() + 80


def test_jaw_opening_moves_lower_lip_and_chin_down():
    identity = sample_identity(5)
    closed, opened = landmarks_3d(identity, [0.0, 0.3], np.zeros((2, 11)))
    assert opened[57, 1] < closed[57, 1] - 0.02  # lower lip, metres
    assert opened[8, 1] < closed[8, 1] - 0.015  # chin
    np.testing.assert_allclose(opened[17:48], closed[17:48])  # brows, nose and eyes stay
    # in the image too, and the mouth is dark inside once open
    images, pixels = render_with_landmarks(identity, np.stack([_params(), _params(jaw=0.3)]))
    assert pixels[1, 57, 1] > pixels[0, 57, 1] + 15
    x, y = np.round(pixels[1, [62, 66]].mean(0)).astype(int)
    assert images[1, y, x].mean() < images[0, y, x].mean() - 40


def test_landmarks_are_linear_in_jaw_and_expressions():
    identity = sample_identity(2)
    rng = np.random.default_rng(1)
    jaw, exp = rng.uniform(0, 0.3, 2), rng.uniform(-1, 1, (2, 11))
    a, b = landmarks_3d(identity, jaw, exp)
    (both,) = landmarks_3d(identity, [jaw.sum()], exp.sum(0, keepdims=True))
    (neutral,) = landmarks_3d(identity, [0.0], np.zeros((1, 11)))
    np.testing.assert_allclose(both - neutral, (a - neutral) + (b - neutral), atol=1e-6)


def test_official_crop_of_a_frontal_face_covers_the_frame():
    pixels = project(LANDMARKS_3D[None], _params()[None])
    x0, y0, x1, y1 = crop_box(pixels[0])
    assert 0.85 * CAMERA.size < x1 - x0 < 1.15 * CAMERA.size
    assert abs((x0 + x1) / 2 - CAMERA.centre) < 8 and abs((y0 + y1) / 2 - CAMERA.centre) < 15


def test_motion_stays_in_its_documented_ranges():
    clips = np.stack([clip_motion(seed, 200) for seed in range(10)])
    params = clips.reshape(-1, clips.shape[-1])
    assert np.all(np.abs(params[:, :3]) <= POSE_LIMITS)
    assert params[:, 0].max() - params[:, 0].min() > 30  # the head really turns
    assert params[:, 3].min() >= 0 and params[:, 3].max() <= JAW_MAX and params[:, 3].max() > 0.15
    blinks = params[:, 4 + EXPRESSION_NAMES.index("eye_close_left")]
    assert blinks.max() > 0.9 and np.mean(blinks > 0.5) < 0.2  # eyes close now and then, mostly open
    assert np.all(np.abs(params[:, 4:]) <= 1)
    assert np.abs(np.diff(clips[..., 0], axis=1)).max() < 5  # smooth: under 5 degrees of yaw between frames


def test_dlib_finds_the_faces_and_their_landmarks():
    from models.detect import build_detector

    detector = build_detector("dlib")
    poses = [_params(), _params(yaw=25, pitch=-8, roll=6, jaw=0.15), _params(yaw=-20, pitch=12, smile=0.8),
             _params(yaw=10, roll=-8, jaw=0.25, eye_close_left=1.0, brow_raise=0.8)]
    for seed in (1, 2):
        images, truth = render_with_landmarks(sample_identity(seed), np.stack(poses))
        for image, true in zip(images, truth):
            faces = detector.detect(image[None])[0]
            assert len(faces) == 1
            assert np.linalg.norm(faces[0].landmarks - true, axis=-1).mean() < 8  # pixels


def test_a_sweep_clip_moves_one_parameter_over_its_whole_range():
    for parameter in (0, 3, 4, 9, 14):
        params = sweep_motion(11, 30, parameter)
        still = np.delete(params, parameter, axis=1)
        assert np.ptp(still, axis=0).max() == 0  # everything else holds still
        low, high = PARAM_LIMITS[parameter]
        assert params[:, parameter].min() < low + 0.05 * (high - low)
        assert params[:, parameter].max() > high - 0.05 * (high - low)
        assert np.all((params >= np.array(PARAM_LIMITS).T[0] - 1e-6) & (params <= np.array(PARAM_LIMITS).T[1] + 1e-6))


def test_sweep_clips_join_a_world_without_changing_its_talking_clips():
    talking = SynthConfig(identities=3, videos_per_identity=1, clips_per_video=2, min_seconds=1, max_seconds=2, seed=4)
    swept = talking.model_copy(update={"sweep_clips_per_identity": 6, "sweep_seconds": 1.0})
    plans, with_sweeps = plan_world(talking), plan_world(swept)
    assert [plan for plan in with_sweeps if plan.sweep is None] == plans
    assert [p.fingerprint(swept) for p in with_sweeps if p.sweep is None] == [p.fingerprint(talking) for p in plans]
    sweeps = [plan for plan in with_sweeps if plan.sweep is not None]
    assert len(sweeps) == 18 and sorted({plan.sweep for plan in sweeps}) == list(range(NUM_PARAMS))
    assert all(plan.frames == 25 and plan.video.startswith("sweep") and len(plan.video) == 11 for plan in sweeps)
    assert sweeps[0].params()[:, sweeps[0].sweep].std() > 0
