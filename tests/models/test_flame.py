"""FLAME layer, safe loading of FLAME's pickles, and the Euler angles of the reference code.

The real FLAME model cannot be downloaded here, so a small synthetic model in FLAME's exact file layout is built:
five joints (root, neck, jaw, two eyes) with groups of vertices skinned to them, pose correctives that touch only the
vertices of their joint, a chumpy `Ch` for `shapedirs` and a scipy csc matrix for `J_regressor`, pickled with
protocol 2 as Python 2 did; the landmark embedding is a dict with torch tensors saved into a .npy, as DECA's is.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation

from models.flame import (
    FLAME,
    FlameAssets,
    UnsafePickleError,
    axis_angle_to_matrix,
    convert_flame_pkl_to_npz,
    euler_from_axis_angle,
    orthographic_projection,
    read_flame_pickle,
    read_pickled_npy,
)

ROOT, NECK, JAW, EYE_LEFT, EYE_RIGHT = range(5)
GROUP = 8  # vertices per joint
PURE, MIXED = slice(0, 4), slice(4, 8)  # within a group: skinned to the joint alone / half with the neck
N_VERTICES = 5 * GROUP
N_FACES = 30


class FakeCh:
    """What chumpy's `Ch.__getstate__` pickles: its array under `x` plus bookkeeping."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self._dirty_vars = {"x"}
        self._itr = None
        self._depends_on_deps = {}
        self._make_dense = False


@contextmanager
def chumpy_importable():
    """Make `chumpy.ch.Ch` resolve to FakeCh while pickling, as pickle checks the class by its module path."""
    chumpy, chumpy_ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    FakeCh.__module__, FakeCh.__qualname__ = "chumpy.ch", "Ch"
    chumpy_ch.Ch, chumpy.ch = FakeCh, chumpy_ch
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "chumpy", chumpy)
        patch.setitem(sys.modules, "chumpy.ch", chumpy_ch)
        yield


def group(joint: int) -> slice:
    return slice(joint * GROUP, (joint + 1) * GROUP)


def synthetic_flame(rng: np.random.Generator) -> tuple[dict, dict]:
    """FLAME's `generic_model.pkl` dict (plain arrays) and DECA's landmark embedding dict."""
    template = rng.normal(size=(N_VERTICES, 3))
    weights = np.zeros((N_VERTICES, 5))
    for joint in range(5):
        weights[group(joint), joint] = 1.0
        if joint not in (ROOT, NECK):
            mixed = np.arange(group(joint).start, group(joint).stop)[MIXED]
            weights[mixed, joint] = weights[mixed, NECK] = 0.5
    joint_regressor = np.zeros((5, N_VERTICES))
    for joint in range(5):
        joint_regressor[joint, group(joint)] = 1.0 / GROUP
    # pose correctives of joint k (columns 9(k-1)..9k) act only on the vertices that joint skins
    posedirs = np.zeros((N_VERTICES, 3, 36))
    for joint in range(1, 5):
        skinned = weights[:, joint] > 0
        posedirs[skinned, :, 9 * (joint - 1):9 * joint] = 0.05 * rng.normal(size=(skinned.sum(), 3, 9))
    faces = np.stack([rng.choice(N_VERTICES, 3, replace=False) for _ in range(N_FACES)]).astype(np.uint32)

    def bary(*shape: int) -> np.ndarray:
        b = rng.uniform(0.1, 1.0, size=(*shape, 3))
        return b / b.sum(-1, keepdims=True)

    model = {
        "v_template": template,
        "shapedirs": 0.1 * rng.normal(size=(N_VERTICES, 3, 400)),
        "posedirs": posedirs,
        "J_regressor": joint_regressor,
        "kintree_table": np.array([[2**32 - 1, ROOT, NECK, NECK, NECK], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": weights,
        "f": faces,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    embedding = {
        "static_lmk_faces_idx": rng.integers(0, N_FACES, 51),
        "static_lmk_bary_coords": bary(51),
        "dynamic_lmk_faces_idx": rng.integers(0, N_FACES, (79, 17)),
        "dynamic_lmk_bary_coords": bary(79, 17),
        "full_lmk_faces_idx": rng.integers(0, N_FACES, (1, 68)),
        "full_lmk_bary_coords": bary(1, 68),
    }
    return model, embedding


@pytest.fixture(scope="module")
def flame_files(tmp_path_factory):
    """The synthetic model written as the official files: (plain dicts, pkl path, embedding path)."""
    model, embedding = synthetic_flame(np.random.default_rng(0))
    folder = tmp_path_factory.mktemp("flame")
    with chumpy_importable():
        official = dict(model, shapedirs=FakeCh(model["shapedirs"]),
                        J_regressor=scipy.sparse.csc_matrix(model["J_regressor"]))
        (folder / "generic_model.pkl").write_bytes(pickle.dumps(official, protocol=2))
    as_tensors = {key: torch.from_numpy(embedding[key]) for key in ("dynamic_lmk_faces_idx",
                                                                   "dynamic_lmk_bary_coords")}
    np.save(folder / "landmark_embedding.npy", {**embedding, **as_tensors}, allow_pickle=True)
    return model, embedding, folder / "generic_model.pkl", folder / "landmark_embedding.npy"


@pytest.fixture(scope="module")
def flame(flame_files) -> FLAME:
    _, _, pkl, embedding = flame_files
    return FLAME.from_files(pkl, embedding).eval()


def zero_params(batch: int = 1) -> dict[str, torch.Tensor]:
    return {"shape": torch.zeros(batch, 100), "expression": torch.zeros(batch, 50), "pose": torch.zeros(batch, 6)}


def rotvec(axis: str, degrees: float) -> np.ndarray:
    return Rotation.from_euler(axis, degrees, degrees=True).as_rotvec()


def joints_of(model: dict) -> np.ndarray:
    return model["J_regressor"] @ model["v_template"]


# --- loading ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 1])
def test_older_pickle_protocols_are_read_too(flame_files, tmp_path, protocol):
    model = flame_files[0]
    path = tmp_path / "generic_model.pkl"
    with chumpy_importable():  # protocols 0/1 rebuild instances through copyreg._reconstructor
        path.write_bytes(pickle.dumps({"shapedirs": FakeCh(model["shapedirs"][:2]),
                                       "J_regressor": scipy.sparse.csr_matrix(model["J_regressor"])}, protocol))
    content = read_flame_pickle(path)
    np.testing.assert_array_equal(content["shapedirs"], model["shapedirs"][:2])
    np.testing.assert_array_equal(content["J_regressor"], model["J_regressor"])


def test_pickle_is_read_without_chumpy_or_scipy_classes(flame_files):
    model, embedding, pkl, embedding_path = flame_files
    content = read_flame_pickle(pkl)
    np.testing.assert_array_equal(content["shapedirs"], model["shapedirs"])  # the chumpy array's `x`
    np.testing.assert_array_equal(content["J_regressor"], model["J_regressor"])  # densified csc matrix
    np.testing.assert_array_equal(content["f"], model["f"])
    assert content["bs_style"] == "lbs"
    read = read_pickled_npy(embedding_path)
    assert isinstance(read["dynamic_lmk_faces_idx"], np.ndarray)  # torch tensors come back as arrays
    np.testing.assert_array_equal(read["dynamic_lmk_bary_coords"], embedding["dynamic_lmk_bary_coords"])


def test_npz_conversion_round_trips(flame_files, tmp_path):
    model, _, pkl, embedding_path = flame_files
    npz = convert_flame_pkl_to_npz(pkl, tmp_path / "flame.npz")  # finds landmark_embedding.npy next to it
    from_pkl, from_npz = FlameAssets.load(pkl, embedding_path), FlameAssets.load(npz)
    for name in FlameAssets.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(from_npz, name), getattr(from_pkl, name), err_msg=name)
    assert from_npz.parents.tolist() == [-1, ROOT, NECK, NECK, NECK]
    assert from_npz.full_lmk_faces_idx.shape == (68,) and from_npz.full_lmk_bary_coords.shape == (68, 3)
    with np.load(npz, allow_pickle=False) as plain:  # nothing in it needs unpickling
        assert plain["shapedirs"].dtype == np.float32 and plain["faces"].dtype == np.int64


class RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_that_calls_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "generic_model.pkl"
    payload.write_bytes(pickle.dumps({"f": RunsCommand(f"touch {marker}")}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"system"):
        read_flame_pickle(payload)
    assert not marker.exists()

    npy = tmp_path / "landmark_embedding.npy"
    np.save(npy, {"static_lmk_faces_idx": RunsCommand(f"touch {marker}")}, allow_pickle=True)
    with pytest.raises(UnsafePickleError):
        read_pickled_npy(npy)
    assert not marker.exists()


def test_unknown_class_is_refused_by_name(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"when": __import__("datetime").date(2020, 1, 1)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"datetime\.date"):
        read_flame_pickle(path)


def test_npz_from_elsewhere_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", v_template=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="convert_flame_pkl_to_npz"):
        FlameAssets.load(tmp_path / "other.npz")


# --- the layer ------------------------------------------------------------------------------------------------


def test_zero_parameters_give_the_template(flame, flame_files):
    model, embedding, _, _ = flame_files
    out = flame(**zero_params(2))
    template = torch.from_numpy(model["v_template"]).float()
    torch.testing.assert_close(out.vertices, template.expand(2, -1, -1), atol=1e-6, rtol=0)
    corners = model["v_template"][model["f"][embedding["full_lmk_faces_idx"][0]].astype(int)]  # [68, 3, 3]
    expected = (corners * embedding["full_lmk_bary_coords"][0][..., None]).sum(1)
    torch.testing.assert_close(out.landmarks_static[1], torch.from_numpy(expected).float(), atol=1e-5, rtol=0)
    assert out.vertices.dtype == torch.float32 and out.landmarks.shape == (2, 68, 3)


def test_shape_and_expression_use_flame_bases_0_and_300(flame, flame_files):
    model, _, _, _ = flame_files
    params = zero_params()
    params["shape"][0, 7] = 2.0
    params["expression"][0, 3] = -1.5
    expected = model["v_template"] + 2.0 * model["shapedirs"][..., 7] - 1.5 * model["shapedirs"][..., 303]
    torch.testing.assert_close(flame(**params).vertices[0], torch.from_numpy(expected).float(), atol=1e-5, rtol=0)


def test_pure_jaw_rotation_moves_only_jaw_skinned_vertices(flame, flame_files):
    model, _, _, _ = flame_files
    params = zero_params()
    angle = rotvec("x", 20.0)
    params["pose"][0, 3:] = torch.from_numpy(angle)
    moved = flame(**params).vertices[0].double().numpy()

    template = model["v_template"]
    still = model["weights"][:, JAW] == 0
    np.testing.assert_allclose(moved[still], template[still], atol=1e-6)
    assert np.abs(moved[~still] - template[~still]).min() > 1e-3

    # by hand: the jaw's pose correctives, then a rigid turn about the jaw joint, blended with the (still) neck
    rotation = Rotation.from_rotvec(angle).as_matrix()
    feature = np.zeros(36)
    feature[9:18] = (rotation - np.eye(3)).reshape(-1)
    posed = template + model["posedirs"] @ feature
    jaw_joint = joints_of(model)[JAW]
    turned = (posed - jaw_joint) @ rotation.T + jaw_joint
    jaw = np.arange(group(JAW).start, group(JAW).stop)
    np.testing.assert_allclose(moved[jaw[PURE]], turned[jaw[PURE]], atol=1e-5)
    np.testing.assert_allclose(moved[jaw[MIXED]], 0.5 * posed[jaw[MIXED]] + 0.5 * turned[jaw[MIXED]], atol=1e-5)


def test_global_rotation_turns_the_whole_head_about_the_root(flame, flame_files):
    model, _, _, _ = flame_files
    params = zero_params()
    angle = rotvec("xyz", [10.0, -25.0, 5.0])
    params["pose"][0, :3] = torch.from_numpy(angle)
    root = joints_of(model)[ROOT]
    expected = (model["v_template"] - root) @ Rotation.from_rotvec(angle).as_matrix().T + root
    np.testing.assert_allclose(flame(**params).vertices[0].double().numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(("yaw_degrees", "row"), [(0.0, 0), (10.2, 10), (38.6, 39), (55.0, 39), (-10.0, 49),
                                                  (-38.6, 78), (-60.0, 78)])
def test_contour_landmarks_follow_the_head_yaw(flame, flame_files, yaw_degrees, row):
    model, embedding, _, _ = flame_files
    params = zero_params()
    params["pose"][0, :3] = torch.from_numpy(rotvec("y", yaw_degrees))
    out = flame(**params)
    corners = out.vertices[0].double().numpy()[model["f"][embedding["dynamic_lmk_faces_idx"][row]].astype(int)]
    expected = (corners * embedding["dynamic_lmk_bary_coords"][row][..., None]).sum(1)
    np.testing.assert_allclose(out.landmarks[0, :17].double().numpy(), expected, atol=1e-5)
    corners = out.vertices[0].double().numpy()[model["f"][embedding["static_lmk_faces_idx"]].astype(int)]
    expected = (corners * embedding["static_lmk_bary_coords"][..., None]).sum(1)
    np.testing.assert_allclose(out.landmarks[0, 17:].double().numpy(), expected, atol=1e-5)


# --- rotations and the camera ---------------------------------------------------------------------------------


def test_axis_angle_to_matrix_matches_scipy():
    vectors = np.random.default_rng(1).normal(size=(16, 3))
    ours = axis_angle_to_matrix(torch.from_numpy(vectors)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(vectors).as_matrix(), atol=1e-12)
    assert torch.equal(axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))


@pytest.mark.parametrize(
    ("axis_angle", "angles"),
    [
        ((0.0, math.radians(30), 0.0), (-30.0, 0.0, 0.0)),  # a turn about +y reads as negative yaw
        ((0.0, math.radians(-45), 0.0), (45.0, 0.0, 0.0)),
        ((math.radians(20), 0.0, 0.0), (0.0, 20.0, 0.0)),
        ((0.0, 0.0, math.radians(-15)), (0.0, 0.0, -15.0)),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ],
)
def test_euler_angles_of_single_axis_turns(axis_angle, angles):
    result = euler_from_axis_angle(torch.tensor([axis_angle], dtype=torch.float64))
    np.testing.assert_allclose(result[0].numpy(), angles, atol=1e-9)


def test_euler_angles_of_a_composed_turn():
    # R = Rz(roll) Ry(-yaw) Rx(pitch): the decomposition the reference reads back
    yaw, pitch, roll = 25.0, -12.0, 8.0
    rotation = Rotation.from_euler("ZYX", [roll, -yaw, pitch], degrees=True)
    result = euler_from_axis_angle(torch.from_numpy(rotation.as_rotvec()[None]))
    np.testing.assert_allclose(result[0].numpy(), [yaw, pitch, roll], atol=1e-9)


def test_euler_angles_near_gimbal_lock_follow_the_reference():
    # beyond |R[2,0]| = 0.998 (about 86.4 degrees) the reference reports +-90 yaw and zero roll
    result = euler_from_axis_angle(torch.tensor([[0.0, math.radians(-87.0), 0.0], [0.0, math.radians(87.0), 0.0]],
                                                dtype=torch.float64))
    np.testing.assert_allclose(result.numpy(), [[90.0, 0.0, 0.0], [-90.0, 0.0, 0.0]], atol=1e-9)


def test_orthographic_projection_scales_shifts_and_flips_y():
    points = torch.tensor([[[1.0, 2.0, 5.0], [-1.0, 0.5, -3.0]]])
    cam = torch.tensor([[2.0, 0.5, -1.0]])
    expected = torch.tensor([[[3.0, -2.0], [-1.0, 1.0]]])
    torch.testing.assert_close(orthographic_projection(points, cam), expected)
