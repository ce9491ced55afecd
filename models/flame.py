"""FLAME, the head model behind DECA: shape, expression and pose to a mesh and 68 landmarks.

Follows DECA's `decalib/models/FLAME.py` and `lbs.py` (yfeng95/DECA, itself from FLAME_PyTorch / smplx):

    betas      = [shape (100) | expression (50)]            blend shapes: FLAME's 300 shape + 100 expression bases
    full pose  = [global 3 | neck 3 | jaw 3 | eyes 6]        axis-angle per joint; DECA fixes neck and eyes at zero
    vertices   = linear blend skinning of template + shape/expression offsets + pose-corrective offsets
    landmarks  = 17 contour points chosen by the head's yaw (dynamic) + 51 inner points (static), barycentric on faces

The model files are pickles from the Python 2 era: `generic_model.pkl` holds chumpy objects and a scipy sparse
matrix, `landmark_embedding.npy` a dict (with torch tensors in it) pickled into a .npy. Neither is unpickled with
the standard machinery here: `SafeUnpickler` rebuilds arrays, dtypes, sparse matrices and chumpy arrays from their
stored data and refuses every other global, so a tampered file cannot run code. `convert_flame_pkl_to_npz` writes a
plain .npz (no pickle at all) that `FlameAssets.load` reads afterwards.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import numpy.lib.format as npy_format
import torch
from torch import nn

N_SHAPE = 100
N_EXPRESSION = 50
FLAME_SHAPE_BASES = 300  # FLAME's shapedirs: 300 identity bases, then 100 expression bases
NECK_JOINT = 1
CONTOUR_YAW_LIMIT = 39  # the dynamic contour table has one row per degree of yaw in [-39, 39]
NPZ_FORMAT = "flame-npz-1"

# --------------------------------------------------------------------------------------------------------------
# Reading the Python 2 pickles without running them


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global that is not plain data; nothing from it was called."""


# FLAME's largest array (posedirs, 5023 x 3 x 36) has 542k values; a stated size far past that is an attack on memory
MAX_ARRAY_ELEMENTS = 50_000_000


def _checked_shape(shape: Any, what: str) -> tuple[int, ...]:
    """`shape` as plain non-negative ints of at most `MAX_ARRAY_ELEMENTS` values in all, else `UnsafePickleError`."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not all(isinstance(side, int) and side >= 0 for side in shape) or math.prod(shape) > MAX_ARRAY_ELEMENTS:
        raise UnsafePickleError(f"refusing {what} of shape {shape}: FLAME's arrays have at most "
                                f"{MAX_ARRAY_ELEMENTS:,} values")
    return shape


class _ChumpyArray:
    """Stands in for `chumpy.ch.Ch`: keeps the array it stores under `x` and nothing else."""

    def __setstate__(self, state: dict) -> None:
        self.x = state["x"]


class _SparseMatrix:
    """Stands in for scipy's csc/csr matrices: keeps the compressed arrays to densify them with numpy."""

    compressed_axis = 1  # csc; the csr subclass below compresses rows

    def __setstate__(self, state: dict) -> None:
        self.shape = tuple(state["_shape"] if "_shape" in state else state["shape"])
        self.data, self.indices, self.indptr = state["data"], state["indices"], state["indptr"]

    def dense(self) -> np.ndarray:
        out = np.zeros(_checked_shape(self.shape, "a sparse matrix"), dtype=np.asarray(self.data).dtype)
        outer = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        index = (self.indices, outer) if self.compressed_axis == 1 else (outer, self.indices)
        np.add.at(out, index, self.data)
        return out


class _SparseRows(_SparseMatrix):
    compressed_axis = 0


class _NDArray:
    """Stands in for `numpy.ndarray`: a plain array of a checked size, whether called or passed to _reconstruct."""

    def __new__(cls, shape: Any, dtype: Any = float) -> np.ndarray:
        return np.ndarray(_checked_shape(shape, "an array"), dtype=dtype)


def _reconstruct_ndarray(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by its state; only plain ndarrays here
    if subtype is not _NDArray:
        raise UnsafePickleError(f"refusing to rebuild an array of type {subtype!r}")
    return np.ndarray(_checked_shape(shape, "an array"), dtype=np.uint8)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1')
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _new_object(cls: type, base: type = object, state: Any = None) -> Any:
    # copyreg._reconstructor, used by protocols 0/1 for instances; only our stand-ins reach it
    if cls not in _STAND_INS or base is not object:
        raise UnsafePickleError(f"refusing to reconstruct {cls!r}")
    return cls.__new__(cls)


def _storage_from_bytes(data: bytes) -> Any:
    # a torch storage pickled with plain pickle carries a legacy torch.save blob; read it weights-only
    return torch.load(io.BytesIO(data), weights_only=True)


def _rebuild_tensor(storage: Any, *args: Any) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"refusing to build a tensor on {type(storage)!r}")
    return torch._utils._rebuild_tensor_v2(storage, *args)


_STAND_INS = (_ChumpyArray, _SparseMatrix, _SparseRows)

_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_ndarray,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_ndarray,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy", "ndarray"): _NDArray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("copy_reg", "_reconstructor"): _new_object,
    ("copyreg", "_reconstructor"): _new_object,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("collections", "OrderedDict"): OrderedDict,
    ("chumpy.ch", "Ch"): _ChumpyArray,
    ("scipy.sparse.csc", "csc_matrix"): _SparseMatrix,
    ("scipy.sparse._csc", "csc_matrix"): _SparseMatrix,
    ("scipy.sparse.csr", "csr_matrix"): _SparseRows,
    ("scipy.sparse._csr", "csr_matrix"): _SparseRows,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for FLAME's data files that only knows arrays, sparse matrices and chumpy arrays.

    Every global the pickle names is looked up in `_ALLOWED`; anything else (a function such as `os.system`, any
    other class) raises `UnsafePickleError` before it could be called.
    """

    def __init__(self, file: Any):
        super().__init__(file, encoding="latin1")  # Python 2 str holds raw array bytes

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: FLAME files hold only arrays, sparse matrices and "
                "chumpy arrays"
            ) from None


def _plain(value: Any) -> Any:
    """Stand-ins and tensors to numpy arrays, through dicts and lists."""
    if isinstance(value, _ChumpyArray):
        return _plain(value.x)
    if isinstance(value, _SparseMatrix):
        return value.dense()
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def read_flame_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """FLAME's `generic_model.pkl` as a dict of numpy arrays (and plain values), read by `SafeUnpickler`."""
    with open(path, "rb") as file:
        content = SafeUnpickler(file).load()
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a dict of FLAME arrays, got {type(content).__name__}")
    return _plain(content)


_NPY_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def read_pickled_npy(path: str | os.PathLike) -> Any:
    """A .npy file; an object array (a pickle inside) is read by `SafeUnpickler` and returned as its item."""
    with open(path, "rb") as file:
        version = npy_format.read_magic(file)
        if version not in _NPY_HEADER_READERS:
            raise ValueError(f"{path}: unsupported .npy version {version}")
        _, _, dtype = _NPY_HEADER_READERS[version](file)
        if not dtype.hasobject:
            return np.load(path, allow_pickle=False)
        array = SafeUnpickler(file).load()
    return _plain(array.item() if array.shape == () else array)


# --------------------------------------------------------------------------------------------------------------
# The model's arrays


def _floats(array: Any) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _ints(array: Any) -> np.ndarray:
    return np.asarray(array, dtype=np.int64)


@dataclass(frozen=True)
class FlameAssets:
    """Everything FLAME needs, as plain arrays (the raw FLAME layout, before DECA's truncation to 100/50 bases)."""

    v_template: np.ndarray  # float32 [V, 3]
    shapedirs: np.ndarray  # float32 [V, 3, 300 + n_expression_bases]
    posedirs: np.ndarray  # float32 [V, 3, 9 * (J - 1)]
    J_regressor: np.ndarray  # float32 [J, V] (dense)
    parents: np.ndarray  # int64 [J], parents[0] = -1
    weights: np.ndarray  # float32 [V, J] skinning weights
    faces: np.ndarray  # int64 [F, 3]
    static_lmk_faces_idx: np.ndarray  # int64 [51]
    static_lmk_bary_coords: np.ndarray  # float32 [51, 3]
    dynamic_lmk_faces_idx: np.ndarray  # int64 [79, 17], one row per degree of yaw
    dynamic_lmk_bary_coords: np.ndarray  # float32 [79, 17, 3]
    full_lmk_faces_idx: np.ndarray  # int64 [68]
    full_lmk_bary_coords: np.ndarray  # float32 [68, 3]

    @classmethod
    def from_official(cls, model: dict[str, Any], embedding: dict[str, Any]) -> FlameAssets:
        """From the dicts of `generic_model.pkl` and `landmark_embedding.npy` (as read by the functions above)."""
        parents = np.asarray(model["kintree_table"])[0].astype(np.int64)
        parents[0] = -1  # stored as uint32 max
        return cls(
            v_template=_floats(model["v_template"]),
            shapedirs=_floats(model["shapedirs"]),
            posedirs=_floats(model["posedirs"]),
            J_regressor=_floats(model["J_regressor"]),
            parents=parents,
            weights=_floats(model["weights"]),
            faces=_ints(model["f"]),
            static_lmk_faces_idx=_ints(embedding["static_lmk_faces_idx"]).reshape(-1),
            static_lmk_bary_coords=_floats(embedding["static_lmk_bary_coords"]).reshape(-1, 3),
            dynamic_lmk_faces_idx=_ints(embedding["dynamic_lmk_faces_idx"]),
            dynamic_lmk_bary_coords=_floats(embedding["dynamic_lmk_bary_coords"]),
            full_lmk_faces_idx=_ints(embedding["full_lmk_faces_idx"]).reshape(-1),
            full_lmk_bary_coords=_floats(embedding["full_lmk_bary_coords"]).reshape(-1, 3),
        )

    @classmethod
    def load(
        cls, model_path: str | os.PathLike, landmark_embedding_path: str | os.PathLike | None = None
    ) -> FlameAssets:
        """From a converted .npz, or from the official .pkl plus `landmark_embedding.npy`."""
        model_path = Path(model_path)
        if model_path.suffix == ".npz":
            with np.load(model_path, allow_pickle=False) as npz:
                if str(npz.get("format", "")) != NPZ_FORMAT:
                    raise ValueError(f"{model_path}: not a FLAME .npz written by convert_flame_pkl_to_npz")
                return cls(**{field.name: npz[field.name] for field in fields(cls)})
        if landmark_embedding_path is None:
            raise ValueError(f"{model_path}: FLAME's .pkl needs DECA's landmark_embedding.npy as well")
        return cls.from_official(read_flame_pickle(model_path), read_pickled_npy(landmark_embedding_path))


def convert_flame_pkl_to_npz(
    pkl_path: str | os.PathLike,
    npz_path: str | os.PathLike,
    landmark_embedding_path: str | os.PathLike | None = None,
) -> Path:
    """Write FLAME's `generic_model.pkl` and DECA's landmark embedding as one pickle-free .npz.

    The embedding defaults to `landmark_embedding.npy` next to the .pkl (DECA's `data/` folder holds both).
    """
    pkl_path, npz_path = Path(pkl_path), Path(npz_path)
    if landmark_embedding_path is None:
        landmark_embedding_path = pkl_path.with_name("landmark_embedding.npy")
    assets = FlameAssets.load(pkl_path, landmark_embedding_path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    partial = npz_path.with_name(npz_path.name + ".partial")
    with open(partial, "wb") as file:
        np.savez(file, format=np.array(NPZ_FORMAT), **{f.name: getattr(assets, f.name) for f in fields(assets)})
    partial.replace(npz_path)
    return npz_path


# --------------------------------------------------------------------------------------------------------------
# Rotations


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: [..., 3] axis-angle (radians) to [..., 3, 3] rotation matrices."""
    angle = axis_angle.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    x, y, z = (axis_angle / angle).unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))
    sin, cos = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    identity = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return identity + sin * cross + (1 - cos) * cross @ cross


def euler_from_axis_angle(pose: torch.Tensor) -> torch.Tensor:
    """Head angles [..., 3] = (yaw, pitch, roll) in degrees from DECA's global pose [..., 3] (axis-angle).

    The reference code's reading, `rad2deg(batch_axis2euler(pose))` in libs/DECA/estimate_DECA.py, which goes
    through `batch_matrix2euler` of the authors' copy of DECA's `utils/rotation_converter.py` (read in their
    StyleMask repository, which bundles the same DECA copy; upstream DECA returns the y angle only):
    yaw = asin(R[2,0]), pitch = atan2(R[2,1], R[2,2]), roll = atan2(R[1,0], R[0,0]); near |R[2,0]| = 1 (beyond
    0.998) yaw is set to +-90 and roll to 0. Note the sign: a rotation by +t about the y axis reads as yaw = -t;
    about x, pitch = +t; about z, roll = +t.
    """
    rotation = axis_angle_to_matrix(pose)
    r20 = rotation[..., 2, 0]
    yaw = torch.asin(r20.clamp(-1, 1))
    pitch = torch.atan2(rotation[..., 2, 1], rotation[..., 2, 2])
    roll = torch.atan2(rotation[..., 1, 0], rotation[..., 0, 0])
    # gimbal lock: the official code gives up roll and reads pitch from the first row
    up, down = r20 > 0.998, r20 < -0.998
    yaw = torch.where(up, math.pi / 2, torch.where(down, -math.pi / 2, yaw))
    pitch = torch.where(up, torch.atan2(-rotation[..., 0, 1], -rotation[..., 0, 2]), pitch)
    pitch = torch.where(down, torch.atan2(rotation[..., 0, 1], rotation[..., 0, 2]), pitch)
    roll = torch.where(up | down, torch.zeros_like(roll), roll)
    return torch.rad2deg(torch.stack([yaw, pitch, roll], dim=-1))


def rotation_yaw(rotation: torch.Tensor) -> torch.Tensor:
    """The y-axis angle (radians) of R = Rz Ry Rx, which DECA uses to pick the face contour."""
    return torch.atan2(-rotation[..., 2, 0], torch.hypot(rotation[..., 0, 0], rotation[..., 1, 0]))


# --------------------------------------------------------------------------------------------------------------
# The layer


@dataclass
class FlameOutput:
    vertices: torch.Tensor  # [B, V, 3]
    # [B, 68, 3] contour points chosen by yaw + static inner points (DECA's `landmarks2d`, before projection)
    landmarks: torch.Tensor
    landmarks_static: torch.Tensor  # [B, 68, 3] fixed embedding of all 68 points (DECA's `landmarks3d`)


def linear_blend_skinning(
    betas: torch.Tensor,
    full_pose: torch.Tensor,
    template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor,
    joint_regressor: torch.Tensor,
    parents: list[int],
    skin_weights: torch.Tensor,
) -> torch.Tensor:
    """Posed vertices [B, V, 3]: blend shapes, pose correctives, then each vertex moved by its joints' transforms.

    betas [B, K] weight shapedirs [V, 3, K]; full_pose [B, J*3] axis-angle; posedirs [9*(J-1), V*3] weights the
    flattened (R - I) of the non-root joints; joint_regressor [J, V]; skin_weights [V, J].
    """
    rotations = axis_angle_to_matrix(full_pose.reshape(betas.shape[0], -1, 3))
    return skin_with_rotations(betas, rotations, template, shapedirs, posedirs, joint_regressor, parents,
                               skin_weights)


def skin_with_rotations(
    betas: torch.Tensor,
    rotations: torch.Tensor,
    template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor,
    joint_regressor: torch.Tensor,
    parents: list[int],
    skin_weights: torch.Tensor,
) -> torch.Tensor:
    """`linear_blend_skinning` with the joints' rotations given as matrices [B, J, 3, 3] (no axis-angle step)."""
    batch = betas.shape[0]
    v_shaped = template + torch.einsum("bk,vck->bvc", betas, shapedirs)
    joints = torch.einsum("jv,bvc->bjc", joint_regressor, v_shaped)
    identity = torch.eye(3, dtype=betas.dtype, device=betas.device)
    pose_feature = (rotations[:, 1:] - identity).flatten(1)
    v_posed = v_shaped + (pose_feature @ posedirs).reshape(batch, -1, 3)

    # world transform of each joint, following the kinematic tree from the root
    world_rotation, world_origin = [rotations[:, 0]], [joints[:, 0]]
    for joint in range(1, len(parents)):
        parent = parents[joint]
        offset = (world_rotation[parent] @ (joints[:, joint] - joints[:, parent])[..., None])[..., 0]
        world_rotation.append(world_rotation[parent] @ rotations[:, joint])
        world_origin.append(world_origin[parent] + offset)
    rotation = torch.stack(world_rotation, dim=1)  # [B, J, 3, 3]
    # relative to the rest pose: x -> R_j (x - J_j) + origin_j
    translation = torch.stack(world_origin, dim=1) - (rotation @ joints[..., None])[..., 0]
    transform = torch.cat([rotation, translation[..., None]], dim=-1)  # [B, J, 3, 4]

    per_vertex = torch.einsum("vj,bjmn->bvmn", skin_weights, transform)
    return (per_vertex[..., :3] @ v_posed[..., None])[..., 0] + per_vertex[..., 3]


def vertices_to_landmarks(vertices: torch.Tensor, faces: torch.Tensor, face_index: torch.Tensor,
                          bary_coords: torch.Tensor) -> torch.Tensor:
    """Barycentric points [B, L, 3] on the faces face_index [B, L] with weights bary_coords [B, L, 3]."""
    corners = faces[face_index]  # [B, L, 3] vertex ids
    batch = torch.arange(vertices.shape[0], device=vertices.device)[:, None, None]
    return (vertices[batch, corners] * bary_coords[..., None]).sum(dim=2)


class FLAME(nn.Module):
    """DECA's FLAME layer: `forward(shape [B,100], expression [B,50], pose [B,6])` -> `FlameOutput`.

    pose = [global axis-angle 3 | jaw axis-angle 3] (DECA's code[200:206]); neck and eyes stay at zero unless
    given. Buffers are float32; none of them is learned.
    """

    def __init__(self, assets: FlameAssets, n_shape: int = N_SHAPE, n_expression: int = N_EXPRESSION):
        super().__init__()
        shapedirs = np.concatenate(
            [assets.shapedirs[..., :n_shape],
             assets.shapedirs[..., FLAME_SHAPE_BASES:FLAME_SHAPE_BASES + n_expression]], axis=-1
        )
        pose_bases = assets.posedirs.shape[-1]
        self.n_shape, self.n_expression = n_shape, n_expression
        self.parents = [int(p) for p in assets.parents]
        self.register_buffer("v_template", torch.tensor(_floats(assets.v_template)))
        self.register_buffer("shapedirs", torch.tensor(_floats(shapedirs)))
        self.register_buffer("posedirs", torch.tensor(_floats(assets.posedirs.reshape(-1, pose_bases).T)))
        self.register_buffer("J_regressor", torch.tensor(_floats(assets.J_regressor)))
        self.register_buffer("lbs_weights", torch.tensor(_floats(assets.weights)))
        self.register_buffer("faces", torch.tensor(_ints(assets.faces)))
        for name in ("static_lmk", "dynamic_lmk", "full_lmk"):
            faces_idx, bary_coords = getattr(assets, f"{name}_faces_idx"), getattr(assets, f"{name}_bary_coords")
            self.register_buffer(f"{name}_faces_idx", torch.tensor(_ints(faces_idx)))
            self.register_buffer(f"{name}_bary_coords", torch.tensor(_floats(bary_coords)))
        # the joints from the neck up to the root: their rotations together give the head's yaw
        chain, joint = [], NECK_JOINT
        while joint != -1:
            chain.append(joint)
            joint = self.parents[joint]
        self.neck_chain = chain

    @classmethod
    def from_files(cls, model_path: str | os.PathLike, landmark_embedding_path: str | os.PathLike | None = None,
                   **kwargs: int) -> FLAME:
        """From a converted .npz, or from `generic_model.pkl` + `landmark_embedding.npy` (read safely)."""
        return cls(FlameAssets.load(model_path, landmark_embedding_path), **kwargs)

    def contour_row(self, full_pose: torch.Tensor) -> torch.Tensor:
        """Row [B] of the dynamic contour table for the head's yaw: 0..39 for 0..39 degrees, 40..78 for -1..-39."""
        return self.contour_row_of(axis_angle_to_matrix(full_pose.reshape(full_pose.shape[0], -1, 3)))

    def contour_row_of(self, rotations: torch.Tensor) -> torch.Tensor:
        """`contour_row` of the joints' rotation matrices [B, J, 3, 3]."""
        rotations = rotations[:, self.neck_chain]
        head = rotations[:, 0]
        for rotation in rotations.unbind(1)[1:]:
            head = rotation @ head
        degrees = torch.round(torch.rad2deg(rotation_yaw(head)).clamp(max=CONTOUR_YAW_LIMIT)).long()
        negative = CONTOUR_YAW_LIMIT - degrees.clamp(min=-CONTOUR_YAW_LIMIT)
        return torch.where(degrees < 0, negative, degrees)

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                eye_pose: torch.Tensor | None = None, neck_pose: torch.Tensor | None = None) -> FlameOutput:
        batch = shape.shape[0]
        neck_pose = pose.new_zeros(batch, 3) if neck_pose is None else neck_pose
        eye_pose = pose.new_zeros(batch, 6) if eye_pose is None else eye_pose
        full_pose = torch.cat([pose[:, :3], neck_pose, pose[:, 3:], eye_pose], dim=1)
        return self.from_rotations(shape, expression, axis_angle_to_matrix(full_pose.reshape(batch, -1, 3)))

    def from_rotations(self, shape: torch.Tensor, expression: torch.Tensor, rotations: torch.Tensor) -> FlameOutput:
        """`forward` with every joint's rotation given as a matrix [B, J, 3, 3] (root, neck, jaw, eyes): for poses
        that are rotation matrices already (head angles), with no axis-angle conversion in between."""
        batch = shape.shape[0]
        vertices = skin_with_rotations(
            torch.cat([shape, expression], dim=1), rotations, self.v_template, self.shapedirs, self.posedirs,
            self.J_regressor, self.parents, self.lbs_weights,
        )
        row = self.contour_row_of(rotations)
        face_index = torch.cat([self.dynamic_lmk_faces_idx[row], self.static_lmk_faces_idx.expand(batch, -1)], 1)
        bary = torch.cat([self.dynamic_lmk_bary_coords[row], self.static_lmk_bary_coords.expand(batch, -1, -1)], 1)
        return FlameOutput(
            vertices=vertices,
            landmarks=vertices_to_landmarks(vertices, self.faces, face_index, bary),
            landmarks_static=vertices_to_landmarks(
                vertices, self.faces, self.full_lmk_faces_idx.expand(batch, -1),
                self.full_lmk_bary_coords.expand(batch, -1, -1),
            ),
        )


def orthographic_projection(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """DECA's camera: [B, N, 3] points to image-plane [B, N, 2], cam = (scale, tx, ty); y points down as in images.

    DECA's `batch_orth_proj` followed by its flip of y (deca.py decode).
    """
    scale, shift = cam[:, None, :1], cam[:, None, 1:]
    projected = scale * (points[..., :2] + shift)
    return projected * projected.new_tensor([1.0, -1.0])
