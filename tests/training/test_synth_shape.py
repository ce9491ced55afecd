"""The synthetic world's shape term of train-directions: the parameters' L1 (every one alike) or the posed head's
3D landmarks (each parameter by how far it moves the face, as FLAME's vertex L1 weighs DECA's)."""

from __future__ import annotations

import numpy as np
import torch

from models.directions import NUM_PARAMS, PARAM_NAMES, FaceParams, ParamRanges
from models.synth.head import landmarks_3d, mean_identity, rotation_matrix
from models.synth.motion import PARAM_LIMITS
from models.synth.render import CAMERA, HEAD_POSITION
from storage import networks
from storage.weights import WeightsRegistry
from training.directions import Faces, SynthNet3D

RANGES = ParamRanges(np.concatenate([np.array(PARAM_LIMITS, np.float64), np.full((39, 2), np.nan)]))


def faces(params: torch.Tensor) -> Faces:
    return Faces(params, RANGES.to_shift_space(FaceParams.from_vector(params)), params.new_zeros(len(params), 0))


def moved(base: torch.Tensor, name: str, shift_units: float) -> torch.Tensor:
    """`base` with one parameter moved by `shift_units` of A's units."""
    coords = RANGES.to_shift_space(FaceParams.from_vector(base))
    coords[:, PARAM_NAMES.index(name)] += shift_units
    return RANGES.from_shift_space(coords).to_vector()


def test_landmark_shape_term_is_the_posed_heads_3d_landmark_l1():
    net3d = SynthNet3D(_regressor(), torch.device("cpu"), "landmarks")
    base = torch.zeros(2, NUM_PARAMS)
    base[1, :4] = torch.tensor([10.0, -5.0, 3.0, 0.1])
    other = moved(base, "yaw", 2.0)
    assert float(net3d.shape_distance(faces(base), faces(base))) == 0
    points = []
    for params in (base, other):  # by hand, with the head's own numpy geometry
        values = params.double().numpy()
        head = landmarks_3d(mean_identity(), values[:, 3], values[:, 4:])
        points.append(head @ rotation_matrix(*values[:, :3].T).transpose(0, 2, 1) + HEAD_POSITION)
    by_hand = np.abs(points[0] - points[1]).mean() * CAMERA.focal / CAMERA.distance / (256 / 2)
    np.testing.assert_allclose(float(net3d.shape_distance(faces(other), faces(base))), by_hand, rtol=1e-4)


def test_landmarks_weigh_a_parameter_by_how_far_it_moves_the_face_and_params_weigh_all_alike():
    base = torch.zeros(1, NUM_PARAMS)
    by_params = SynthNet3D(_regressor(), torch.device("cpu"), "params")
    by_landmarks = SynthNet3D(_regressor(), torch.device("cpu"), "landmarks")
    terms = {name: [float(net.shape_distance(faces(moved(base, name, 1.0)), faces(base)))
                    for net in (by_params, by_landmarks)] for name in ("yaw", "jaw", "exp_00", "exp_10")}
    assert np.allclose([params for params, _ in terms.values()], 1 / NUM_PARAMS, rtol=1e-4)
    assert terms["yaw"][1] > 5 * terms["exp_00"][1] and terms["jaw"][1] > terms["exp_10"][1] > 0


def _regressor():
    return WeightsRegistry().load_spec(networks.REGRESSOR, expect=networks.REGRESSOR_BUILDER)[0]
