"""A parametric head whose parameters are known: identity, the 68 iBUG landmarks in 3D, pose and expression.

Head coordinates are FLAME's axes, in metres: x towards the subject's left (the image's right in a frontal view),
y up, z out of the face (towards the camera in a frontal view). The origin is the centre of the skull at eye
height, and it is the point the head rotates about.

The per-frame parameter vector is the 15-d layout of `models.directions.PARAM_NAMES`, the same as DECA's reading
of a face, so everything after it is shared with real footage:

    yaw, pitch, roll   degrees; R = Rz(roll) Ry(-yaw) Rx(pitch), DECA's reading (`models.flame.euler_from_axis_angle`
                       of R's axis-angle gives the three back). Positive yaw turns the face towards the subject's
                       right (the image's left), positive pitch looks down, positive roll tilts the head
                       counter-clockwise in the image.
    jaw                DECA's unit: radians of jaw-opening rotation, 0 (closed) to about 0.35 (wide open)
    exp_00..exp_10     `EXPRESSION_NAMES`, roughly in [-1, 1], 0 neutral (meanings in `EXPRESSION_NOTES`)

Landmarks are linear in jaw and expressions: `landmarks_3d = base + jaw * JAW_BASIS + exp @ EXPRESSION_BASIS`,
where the bases move points in the face's xy plane and along the surface's slope in z. The renderer paints the
eyes, brows, nose, lips, mouth and the face's contour from these same points, so the image and the landmarks agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# Parameters

EXPRESSION_NOTES = {
    "smile": "mouth corners up and out (negative: down, a sad mouth)",
    "mouth_stretch": "mouth corners pulled sideways, lips thinner (negative: narrower mouth)",
    "lip_pucker": "lips pushed together and rounded, corners in (negative: corners out)",
    "upper_lip_raise": "upper lip up, showing the teeth (negative: pressed down)",
    "lower_lip_depress": "lower lip down, showing the teeth (negative: pushed up)",
    "eye_close_left": "subject's left eye (image right) closes: 0 open, 1 shut (negative: wide open)",
    "eye_close_right": "subject's right eye (image left) closes: 0 open, 1 shut (negative: wide open)",
    "brow_raise": "both brows up (negative: lowered)",
    "brow_frown": "inner brow ends down and together (negative: inner ends up, a worried look)",
    "cheek_puff": "cheeks and lower face contour out, lips pressed (negative: sucked in)",
    "mouth_sideways": "whole mouth towards the subject's left (negative: right)",
}
EXPRESSION_NAMES = tuple(EXPRESSION_NOTES)
NUM_EXPRESSIONS = len(EXPRESSION_NAMES)  # 11, as models.directions.NUM_EXPRESSIONS

SHAPE_NOTES = {
    "head_width": "skull and face wider (+) or narrower (-), about 8 % per unit",
    "face_length": "lower face (below the eyes) longer or shorter, about 8 % per unit",
    "eye_spacing": "eyes and brows further apart, 3 mm per unit",
    "nose_length": "nose longer and larger, about 12 % per unit",
    "mouth_width": "mouth wider, about 12 % per unit",
    "jaw_width": "lower jaw contour wider (square) or narrower (pointed), about 10 % per unit",
}
SHAPE_NAMES = tuple(SHAPE_NOTES)
HAIR_STYLES = ("short", "fringe", "long", "bald")

# The mean identity's landmarks in the face plane (x, y metres), iBUG order; z comes from the head's surface.
_CONTOUR_X = 0.070 * np.cos(np.linspace(np.pi, 0, 17))  # points 0..16, image left to right through the chin
_CONTOUR_Y = -0.110 * np.sin(np.linspace(0, np.pi, 17)) ** 0.8 + 0.002
_TEMPLATE_XY = np.array(
    [
        *zip(np.sign(_CONTOUR_X) * np.abs(_CONTOUR_X) ** 0.93 * 0.070 ** 0.07, _CONTOUR_Y),  # 0-16 contour, squarish
        (-0.056, 0.014), (-0.047, 0.023), (-0.036, 0.027), (-0.025, 0.026), (-0.012, 0.022),  # 17-21 right brow
        (0.012, 0.022), (0.025, 0.026), (0.036, 0.027), (0.047, 0.023), (0.056, 0.014),  # 22-26 left brow
        (0.0, 0.002), (0.0, -0.012), (0.0, -0.026), (0.0, -0.040),  # 27-30 nose bridge to tip
        (-0.013, -0.046), (-0.0065, -0.049), (0.0, -0.050), (0.0065, -0.049), (0.013, -0.046),  # 31-35 nostrils
        (-0.046, 0.0), (-0.038, 0.0055), (-0.027, 0.0055), (-0.018, 0.0), (-0.027, -0.004), (-0.038, -0.004),  # 36-41
        (0.018, 0.0), (0.027, 0.0055), (0.038, 0.0055), (0.046, 0.0), (0.038, -0.004), (0.027, -0.004),  # 42-47
        (-0.026, -0.068), (-0.017, -0.062), (-0.007, -0.059), (0.0, -0.060), (0.007, -0.059), (0.017, -0.062),
        (0.026, -0.068),  # 48-54 outer upper lip, corner to corner
        (0.017, -0.075), (0.008, -0.079), (0.0, -0.080), (-0.008, -0.079), (-0.017, -0.075),  # 55-59 outer lower
        (-0.021, -0.068), (-0.008, -0.0665), (0.0, -0.0665), (0.008, -0.0665),  # 60-63 inner upper
        (0.021, -0.068), (0.008, -0.0675), (0.0, -0.0675), (-0.008, -0.0675),  # 64-67 inner lower
    ],
    np.float64,
)

# index groups
CONTOUR = np.arange(0, 17)
RIGHT_BROW, LEFT_BROW = np.arange(17, 22), np.arange(22, 27)
NOSE_BRIDGE, NOSTRILS = np.arange(27, 31), np.arange(31, 36)
RIGHT_EYE, LEFT_EYE = np.arange(36, 42), np.arange(42, 48)
OUTER_LIPS, INNER_LIPS = np.arange(48, 60), np.arange(60, 68)
UPPER_LIP = np.array([48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60])
LOWER_LIP = np.array([54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64])


# --------------------------------------------------------------------------------------------------------------
# Identity


@dataclass(frozen=True)
class HeadIdentity:
    """Everything that stays fixed for one synthetic person. Colours are RGB in [0, 1]."""

    seed: int
    shape: tuple[float, ...] = (0.0,) * len(SHAPE_NAMES)  # `SHAPE_NAMES`, each about in [-1, 1]
    skin: tuple[float, float, float] = (0.85, 0.66, 0.55)
    hair: tuple[float, float, float] = (0.20, 0.13, 0.08)
    hair_style: str = "short"  # one of HAIR_STYLES
    iris: tuple[float, float, float] = (0.30, 0.20, 0.12)
    brows: tuple[float, float, float] = (0.18, 0.12, 0.08)
    lips: tuple[float, float, float] = (0.70, 0.36, 0.36)
    background: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.55, 0.62, 0.70), (0.30, 0.35, 0.42))
    # top and bottom colour of a vertical gradient

    def as_record(self) -> dict:
        """Flat scalar columns (for tables such as truth.parquet)."""
        record: dict = {"identity_seed": self.seed, "hair_style": self.hair_style}
        record.update({f"shape_{name}": float(v) for name, v in zip(SHAPE_NAMES, self.shape)})
        for name in ("skin", "hair", "iris", "brows", "lips"):
            record.update({f"{name}_{c}": float(v) for c, v in zip("rgb", getattr(self, name))})
        return record


_SKIN_TONES = np.array([(0.96, 0.80, 0.69), (0.90, 0.70, 0.56), (0.78, 0.57, 0.42), (0.60, 0.41, 0.29),
                        (0.45, 0.30, 0.21)])
_HAIR_TONES = np.array([(0.08, 0.06, 0.05), (0.25, 0.16, 0.09), (0.45, 0.30, 0.15), (0.75, 0.60, 0.35),
                        (0.55, 0.25, 0.10), (0.55, 0.55, 0.55)])
_IRIS_TONES = np.array([(0.25, 0.15, 0.08), (0.15, 0.30, 0.45), (0.25, 0.35, 0.20), (0.10, 0.07, 0.05)])
_BACKGROUNDS = np.array([(0.55, 0.65, 0.80), (0.70, 0.75, 0.70), (0.35, 0.45, 0.40), (0.80, 0.78, 0.72),
                         (0.30, 0.32, 0.45), (0.60, 0.50, 0.55)])


def sample_identity(rng: np.random.Generator | int) -> HeadIdentity:
    """A random person, deterministic for a seed (an int, or a Generator whose next draws decide it)."""
    if isinstance(rng, (int, np.integer)):
        seed, rng = int(rng), np.random.default_rng(int(rng))
    else:
        seed = int(rng.integers(2**31))
        rng = np.random.default_rng(seed)
    shape = tuple(float(v) for v in np.clip(rng.normal(0, 0.5, len(SHAPE_NAMES)), -1, 1))
    skin = _blend(_SKIN_TONES, rng.uniform(0, len(_SKIN_TONES) - 1))
    hair = np.clip(_HAIR_TONES[rng.integers(len(_HAIR_TONES))] * rng.uniform(0.85, 1.15), 0, 1)
    # brows are darker than the hair and always darker than the skin, so they read as brows
    brows = np.minimum(hair * 0.8, skin * 0.45)
    lips = np.clip(skin * np.array([0.88, 0.55, 0.55]) + rng.normal(0, 0.03, 3), 0, 1)
    background = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
    background = np.clip(background + rng.normal(0, 0.05, 3), 0, 1)
    return HeadIdentity(
        seed=seed,
        shape=shape,
        skin=_triple(skin),
        hair=_triple(hair),
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        iris=_triple(_IRIS_TONES[rng.integers(len(_IRIS_TONES))]),
        brows=_triple(brows),
        lips=_triple(lips),
        background=(_triple(background), _triple(background * rng.uniform(0.55, 0.8))),
    )


def mean_identity() -> HeadIdentity:
    """The average person: all shape coefficients 0, middle colours. `LANDMARKS_3D` is its neutral face."""
    return HeadIdentity(seed=0)


def _blend(tones: np.ndarray, position: float) -> np.ndarray:
    low = int(np.floor(position))
    high = min(low + 1, len(tones) - 1)
    return tones[low] + (tones[high] - tones[low]) * (position - low)


def _triple(values) -> tuple[float, float, float]:
    return tuple(round(float(v), 4) for v in values)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# Geometry: the head is a few ellipsoids; the face lies on the front of the skull (and of the nose)


@dataclass(frozen=True)
class Ellipsoid:
    """Points p with |rotation^T (p - centre) / axes| = 1, in head coordinates."""

    centre: np.ndarray  # [3]
    axes: np.ndarray  # [3] semi-axes
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # [3, 3] its own axes in head coordinates


@dataclass(frozen=True)
class HeadGeometry:
    """The solids and the neutral landmarks of one identity."""

    skull: Ellipsoid
    nose: Ellipsoid
    hair: Ellipsoid  # a shell a little larger than the skull; the hair style says where it is hair
    landmarks: np.ndarray  # [68, 3] neutral face
    jaw_basis: np.ndarray  # [68, 3] landmark motion per radian of jaw opening
    expression_basis: np.ndarray  # [11, 68, 3] landmark motion per unit of each expression


def _rotation_x(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def head_geometry(identity: HeadIdentity) -> HeadGeometry:
    """Solids, neutral landmarks and deformation bases of an identity (cheap: microseconds of numpy)."""
    s = dict(zip(SHAPE_NAMES, identity.shape))
    width = 1 + 0.08 * s["head_width"]
    length = 1 + 0.08 * s["face_length"]
    nose_scale = 1 + 0.12 * s["nose_length"]
    skull = Ellipsoid(np.array([0.0, -0.015, 0.0]), np.array([0.078 * width, 0.130 * (1 + 0.05 * s["face_length"]), 0.098]))
    # the nose: an ellipsoid along y, its lower end tilted forwards, sunk into the skull so the tip stands out ~2 cm
    nose_centre_y = -0.021 * nose_scale * length
    nose = Ellipsoid(
        np.array([0.0, nose_centre_y, _front_z(skull, 0.0, nose_centre_y) - 0.006]),
        np.array([0.0115, 0.030 * nose_scale, 0.016 * nose_scale]),
        _rotation_x(-22.0),
    )
    hair = Ellipsoid(skull.centre + [0.0, 0.007, -0.004], skull.axes + [0.010, 0.012, 0.012])

    xy = _TEMPLATE_XY.copy()
    xy[:, 0] *= width
    xy[:, 1] = np.where(xy[:, 1] < 0, xy[:, 1] * length, xy[:, 1])
    eyes = np.r_[RIGHT_EYE, LEFT_EYE, RIGHT_BROW, LEFT_BROW]
    xy[eyes, 0] += np.sign(xy[eyes, 0]) * 0.003 * s["eye_spacing"]
    nose_points = np.r_[NOSE_BRIDGE[1:], NOSTRILS]
    xy[nose_points, 1] = xy[27, 1] + (xy[nose_points, 1] - xy[27, 1]) * nose_scale
    xy[NOSTRILS, 0] *= nose_scale
    mouth = np.r_[OUTER_LIPS, INNER_LIPS]
    xy[mouth, 0] *= 1 + 0.12 * s["mouth_width"]
    lowness = np.clip(-xy[CONTOUR, 1] / 0.11, 0, 1)  # the jaw widens most at its lower points
    xy[CONTOUR, 0] *= 1 + 0.10 * s["jaw_width"] * lowness * (1 - lowness) * 4

    skin_z = lambda x, y: front_z([skull, nose], x, y)  # noqa: E731
    landmarks = np.column_stack([xy, skin_z(xy[:, 0], xy[:, 1])])
    jaw_xy, expression_xy = _motion_xy(xy)
    # motion along the skull's surface: dz = dz/dx dx + dz/dy dy at each landmark (first order, so still linear)
    slope = _surface_slope(skull, xy)
    jaw_basis = np.column_stack([jaw_xy, (jaw_xy * slope).sum(-1)])
    expression_basis = np.concatenate([expression_xy, (expression_xy * slope).sum(-1, keepdims=True)], axis=-1)
    return HeadGeometry(skull, nose, hair, landmarks, jaw_basis, expression_basis)


def _front_z(ellipsoid: Ellipsoid, x: float, y: float) -> float:
    return float(front_z([ellipsoid], np.array([x]), np.array([y]))[0])


def front_z(solids: list[Ellipsoid], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """z of the front-most surface at (x, y), seen along -z from in front of the face (the skull's back if none)."""
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    best = np.full(x.shape, -np.inf)
    for solid in solids:
        origin = np.stack([x, y, np.full(x.shape, 1.0)], -1)
        direction = np.broadcast_to([0.0, 0.0, -1.0], origin.shape)
        near, _ = intersect_ellipsoid_np(solid, origin, direction)
        best = np.maximum(best, np.where(np.isfinite(near), 1.0 - near, -np.inf))
    return best


def intersect_ellipsoid_np(solid: Ellipsoid, origin: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameters (near, far) where rays origin + t direction meet the ellipsoid; inf where they miss."""
    o = (origin - solid.centre) @ solid.rotation / solid.axes
    d = direction @ solid.rotation / solid.axes
    a = (d * d).sum(-1)
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - 1
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0))
    hit = disc > 0
    return np.where(hit, (-b - root) / a, np.inf), np.where(hit, (-b + root) / a, np.inf)


def _surface_slope(skull: Ellipsoid, xy: np.ndarray) -> np.ndarray:
    """(dz/dx, dz/dy) of the skull's front surface at each point [N, 2]."""
    eps = 1e-4
    z = lambda x, y: front_z([skull], x, y)  # noqa: E731
    dx = (z(xy[:, 0] + eps, xy[:, 1]) - z(xy[:, 0] - eps, xy[:, 1])) / (2 * eps)
    dy = (z(xy[:, 0], xy[:, 1] + eps) - z(xy[:, 0], xy[:, 1] - eps)) / (2 * eps)
    return np.clip(np.column_stack([dx, dy]), -3, 3)  # points near the silhouette would otherwise shoot off


def _motion_xy(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane landmark motion [68, 2] per radian of jaw and [11, 68, 2] per unit expression, for this face."""
    jaw = np.zeros((68, 2))
    lower_lip = np.r_[55:60, 65:68]
    # the jaw turns about a hinge near the ears, ~9 cm behind the lips: the lower face moves down ~ r * angle
    jaw[lower_lip, 1] = -0.085
    jaw[[48, 54, 60, 64], 1] = -0.040
    lowness = np.clip(-xy[CONTOUR, 1] / np.abs(xy[8, 1]), 0, 1)
    jaw[CONTOUR, 1] = -0.080 * lowness**1.5
    jaw[CONTOUR, 0] = -0.010 * np.sign(xy[CONTOUR, 0]) * lowness  # the lower jaw narrows a little as it drops

    exp = np.zeros((NUM_EXPRESSIONS, 68, 2))
    side = np.sign(xy[:, 0])
    corners, inner_corners = np.array([48, 54]), np.array([60, 64])
    near_corners = np.array([49, 53, 55, 59, 61, 63, 65, 67])
    upper, lower = np.r_[49:54, 61:64], np.r_[55:60, 65:68]
    e = {name: exp[i] for i, name in enumerate(EXPRESSION_NAMES)}

    e["smile"][np.r_[corners, inner_corners], 0] = 0.005 * side[np.r_[corners, inner_corners]]
    e["smile"][np.r_[corners, inner_corners], 1] = 0.007
    e["smile"][near_corners, 1] = 0.003
    e["smile"][near_corners, 0] = 0.002 * side[near_corners]
    e["mouth_stretch"][np.r_[corners, inner_corners], 0] = 0.008 * side[np.r_[corners, inner_corners]]
    e["mouth_stretch"][near_corners, 0] = 0.004 * side[near_corners]
    e["mouth_stretch"][np.r_[49:54], 1] = -0.0015
    e["mouth_stretch"][np.r_[55:60], 1] = 0.0015
    e["lip_pucker"][np.r_[corners, inner_corners], 0] = -0.008 * side[np.r_[corners, inner_corners]]
    e["lip_pucker"][near_corners, 0] = -0.004 * side[near_corners]
    e["lip_pucker"][np.r_[49:54], 1] = 0.0015
    e["lip_pucker"][np.r_[55:60], 1] = -0.0015
    e["upper_lip_raise"][upper, 1] = 0.005
    e["upper_lip_raise"][[50, 51, 52], 1] = 0.004  # the outer edge lifts a little less: the lip thins
    e["lower_lip_depress"][lower, 1] = -0.005
    e["lower_lip_depress"][[56, 57, 58], 1] = -0.004
    for name, eye in (("eye_close_left", LEFT_EYE), ("eye_close_right", RIGHT_EYE)):
        upper_lid, lower_lid = eye[[1, 2]], eye[[4, 5]]
        e[name][upper_lid, 1] = -(xy[upper_lid, 1] - xy[lower_lid[::-1], 1]) * 0.85  # meet 15 % above the lower lid
        e[name][lower_lid, 1] = 0.0008
    brows = np.r_[RIGHT_BROW, LEFT_BROW]
    e["brow_raise"][brows, 1] = 0.007
    e["brow_raise"][[17, 26], 1] = 0.005
    e["brow_raise"][[37, 38, 43, 44], 1] = 0.0012  # the upper lids follow a little
    inner_brow = np.array([20, 21, 22, 23])
    e["brow_frown"][inner_brow, 1] = np.array([-0.003, -0.005, -0.005, -0.003])
    e["brow_frown"][inner_brow, 0] = -0.003 * side[inner_brow]
    cheeks = np.r_[2:7, 10:15]
    e["cheek_puff"][cheeks, 0] = 0.006 * side[cheeks]
    e["cheek_puff"][np.r_[corners, inner_corners], 0] = -0.002 * side[np.r_[corners, inner_corners]]
    mouth = np.r_[OUTER_LIPS, INNER_LIPS]
    e["mouth_sideways"][mouth, 0] = 0.006
    return jaw, exp


_MEAN_GEOMETRY = head_geometry(mean_identity())
LANDMARKS_3D = _MEAN_GEOMETRY.landmarks.astype(np.float32)  # [68, 3] the mean identity's neutral face, metres
JAW_BASIS = _MEAN_GEOMETRY.jaw_basis.astype(np.float32)  # [68, 3] per radian, mean identity
EXPRESSION_BASIS = _MEAN_GEOMETRY.expression_basis.astype(np.float32)  # [11, 68, 3] per unit, mean identity


def landmarks_3d(identity: HeadIdentity | HeadGeometry, jaw, exp) -> np.ndarray:
    """The 68 landmarks [B, 68, 3] (head coordinates, metres) for jaw [B] (radians) and expressions [B, 11].

    Linear in jaw and expressions: base + jaw * jaw_basis + exp @ expression_basis.
    """
    geometry = identity if isinstance(identity, HeadGeometry) else head_geometry(identity)
    jaw = np.asarray(jaw, np.float64).reshape(-1)
    exp = np.asarray(exp, np.float64).reshape(len(jaw), NUM_EXPRESSIONS)
    points = (geometry.landmarks[None] + jaw[:, None, None] * geometry.jaw_basis[None]
              + np.einsum("be,enc->bnc", exp, geometry.expression_basis))
    return points.astype(np.float32)


def rotation_matrix(yaw, pitch, roll) -> np.ndarray:
    """Head rotations [B, 3, 3] (head -> camera axes) from angles in degrees: Rz(roll) Ry(-yaw) Rx(pitch).

    This is the matrix whose axis-angle DECA's reading (`models.flame.euler_from_axis_angle`) turns back into
    (yaw, pitch, roll): yaw = asin(R[2,0]), pitch = atan2(R[2,1], R[2,2]), roll = atan2(R[1,0], R[0,0]).
    """
    yaw, pitch, roll = (np.deg2rad(np.asarray(v, np.float64).reshape(-1)) for v in (yaw, pitch, roll))
    cy, sy = np.cos(-yaw), np.sin(-yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(-1, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return (rz @ ry @ rx).astype(np.float32)
