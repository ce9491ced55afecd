"""Render the parametric head to 256x256 RGB: analytic ray casting of ellipsoids, a painted face, Lambert shading.

The camera (`CAMERA`) is a fixed pinhole on the +z axis of camera space (x right, y up, z towards the viewer),
looking at the origin; the head's origin sits at `HEAD_POSITION`, so camera point = R(yaw, pitch, roll) p + HEAD_POSITION
for a head point p. Image pixels have their centres at integer coordinates, x to the right, y down:

    u = (size - 1) / 2 + focal * X / (distance - Z),     v = (size - 1) / 2 - focal * Y / (distance - Z)

Each pixel's ray is turned into head coordinates (one 3x3 product per frame) and met with the skull, the nose and a
hair shell (a few multiply-adds each: a quadratic per ellipsoid), plus a neck that stays upright in camera space.
Skin takes its colour from a face texture painted in the face's xy plane (`paint_faces`) from the frame's 68
landmarks, so eyes, brows, nostrils, lips, mouth and the jaw line are drawn exactly where the landmarks are.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.synth.camera import CAMERA, HEAD_POSITION, Camera
from models.synth.head import (HeadGeometry, HeadIdentity, Ellipsoid, LEFT_BROW, LEFT_EYE, LOWER_LIP, NOSTRILS,
                               RIGHT_BROW, RIGHT_EYE, UPPER_LIP, head_geometry, landmarks_3d, rotation_matrix)


# an upright neck that does not turn with the head: a vertical elliptic cylinder in camera space (an infinite y
# semi-axis), cut off at NECK_TOP so that it ends inside the head
NECK_SOLID = Ellipsoid(np.array([0.0, 0.0, -0.02]), np.array([0.056, np.inf, 0.052]))
NECK_TOP = HEAD_POSITION[1] - 0.06
LIGHT = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])  # towards the light, camera space
AMBIENT, DIFFUSE = 0.38, 0.72

# The face texture: the face's xy plane (head coordinates) at half a millimetre per texel
TEXEL = 0.0005
TEXTURE_X = (-0.085, 0.085)  # points outside take the nearest edge texel (skin; the chin shadow at the bottom)
TEXTURE_Y = (-0.155, 0.055)
TEXTURE_SHAPE = (int(round((TEXTURE_Y[1] - TEXTURE_Y[0]) / TEXEL)) + 1, int(round((TEXTURE_X[1] - TEXTURE_X[0]) / TEXEL)) + 1)

# Where each hair style has hair on its shell: (front hairline height at x=0, how fast it drops towards the
# temples per m^2 of x, hairline height at the back). "bald" keeps a ring at the back only.
HAIR_LINES = {"short": (0.066, 8.0, -0.035), "fringe": (0.043, 5.0, -0.05), "long": (0.066, 8.0, -1.0),
              "bald": (np.inf, 0.0, -0.04)}


def project(points3d, params, camera: Camera = CAMERA) -> np.ndarray:
    """Image pixels [B, N, 2] of head points [B, N, 3] (metres) under the pose of params [B, 15] (degrees)."""
    points3d = np.asarray(points3d, np.float64)
    params = np.asarray(params, np.float64).reshape(len(points3d), -1)
    rotation = rotation_matrix(params[:, 0], params[:, 1], params[:, 2]).astype(np.float64)
    camera_points = points3d @ rotation.transpose(0, 2, 1) + HEAD_POSITION
    depth = camera.distance - camera_points[..., 2]
    u = camera.centre + camera.focal * camera_points[..., 0] / depth
    v = camera.centre - camera.focal * camera_points[..., 1] / depth
    return np.stack([u, v], -1).astype(np.float32)


def render(identity: HeadIdentity, params) -> np.ndarray:
    """Frames uint8 [B, 256, 256, 3] of one identity for per-frame parameters [B, 15] (`PARAM_NAMES` order)."""
    return render_with_landmarks(identity, params)[0]


def render_with_landmarks(identity: HeadIdentity, params, camera: Camera = CAMERA) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [B, S, S, 3] and the true 68 landmarks projected to image pixels [B, 68, 2] (float32)."""
    params = np.asarray(params, np.float32).reshape(-1, 15)
    points = landmarks_3d(_geometry(identity), params[:, 3], params[:, 4:])
    frames = _ray_cast(identity, params, paint_faces(identity, points), camera)
    return frames, project(points, params, camera)


# --------------------------------------------------------------------------------------------------------------
# The face texture


def _to_texels(xy: np.ndarray) -> np.ndarray:
    """Face-plane points [..., 2] (metres) -> texel coordinates, fixed point with 4 fractional bits for cv2."""
    u = (xy[..., 0] - TEXTURE_X[0]) / TEXEL
    v = (TEXTURE_Y[1] - xy[..., 1]) / TEXEL
    return np.round(np.stack([u, v], -1) * 16).astype(np.int32)


def _rgb(colour, scale: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * scale * 255, 0, 255)) for c in colour)  # type: ignore[return-value]


@lru_cache(maxsize=16)
def _base_texture(identity: HeadIdentity) -> np.ndarray:
    """What does not move with expressions: skin with soft shadows in the eye sockets, beside and under the nose."""
    shade = np.zeros(TEXTURE_SHAPE, np.float32)
    points = _geometry(identity).landmarks[:, :2]
    for eye in (RIGHT_EYE, LEFT_EYE):
        centre = _to_texels(points[eye].mean(0) + [0, 0.001]) // 16
        cv2.ellipse(shade, tuple(int(c) for c in centre), (int(0.021 / TEXEL), int(0.012 / TEXEL)), 0, 0, 360, 0.30, -1)
    for side in (-1, 1):  # beside the nose, and the crease from the nostrils to the mouth corners
        a = _to_texels(points[27, :2] + [side * 0.009, -0.004]) // 16
        b = _to_texels(points[31 if side < 0 else 35, :2] + [side * 0.002, 0.004]) // 16
        cv2.line(shade, tuple(int(c) for c in a), tuple(int(c) for c in b), 0.22, int(0.004 / TEXEL))
        c = _to_texels(points[31 if side < 0 else 35, :2] + [side * 0.012, -0.002]) // 16
        d = _to_texels(points[48 if side < 0 else 54, :2] + [side * 0.007, 0.0]) // 16
        cv2.line(shade, tuple(int(v) for v in c), tuple(int(v) for v in d), 0.15, int(0.002 / TEXEL))
    nose_bottom = _to_texels(points[33, :2] + [0, -0.003]) // 16
    cv2.ellipse(shade, tuple(int(c) for c in nose_bottom), (int(0.012 / TEXEL), int(0.004 / TEXEL)), 0, 0, 360, 0.3, -1)
    shade = cv2.GaussianBlur(shade, (0, 0), 0.004 / TEXEL)
    skin = np.asarray(identity.skin, np.float32)
    return np.clip((1 - shade[..., None]) * skin * 255, 0, 255).astype(np.uint8)


def paint_faces(identity: HeadIdentity, points: np.ndarray) -> np.ndarray:
    """Face textures uint8 [B, H, W, 3], one per frame, painted from that frame's landmarks [B, 68, 3]."""
    base = _base_texture(identity)
    textures = np.empty((len(points), *TEXTURE_SHAPE, 3), np.uint8)
    for texture, frame_points in zip(textures, points):
        texture[:] = base
        _paint_features(texture, identity, frame_points[:, :2])
    return textures


def _paint_features(texture: np.ndarray, identity: HeadIdentity, xy: np.ndarray) -> None:
    """Jaw line, brows, eyes, nostrils, lips and mouth of one frame, in place, from its landmarks [68, 2]."""
    fill = lambda polygon, colour: cv2.fillPoly(texture, [polygon], colour, cv2.LINE_AA, shift=4)  # noqa: E731
    texels = _to_texels(xy)
    skin, lips = identity.skin, identity.lips
    # below the jaw line: the shadowed underside of the chin
    low = _to_texels(np.array([[xy[16, 0], TEXTURE_Y[0]], [xy[0, 0], TEXTURE_Y[0]]]))
    fill(np.concatenate([texels[:17], low]), _rgb(skin, 0.62))
    cv2.polylines(texture, [texels[:17]], False, _rgb(skin, 0.45), 3, cv2.LINE_AA, shift=4)
    # brows: the landmarks are the upper edge of a band 3.5-5.5 mm thick, thinner at the outer end
    for brow, outer_first in ((RIGHT_BROW, True), (LEFT_BROW, False)):
        thickness = np.linspace(0.0035, 0.0055, 5)[:: 1 if outer_first else -1]
        upper = xy[brow]
        lower = upper - np.column_stack([np.zeros(5), thickness])
        fill(_to_texels(np.concatenate([upper, lower[::-1]])), _rgb(identity.brows))
    for eye in (RIGHT_EYE, LEFT_EYE):
        _paint_eye(texture, identity, texels[eye], _to_texels(xy[eye].mean(0)))
    for nostril in (NOSTRILS[1], NOSTRILS[3]):
        centre = tuple(int(v) for v in _to_texels(xy[nostril] + [0, 0.0015]))
        cv2.ellipse(texture, centre, (int(0.0032 / TEXEL * 16), int(0.0018 / TEXEL * 16)), 0, 0, 360,
                    _rgb(skin, 0.25), -1, cv2.LINE_AA, 4)
    fill(texels[UPPER_LIP], _rgb(lips, 0.9))
    fill(texels[LOWER_LIP], _rgb(lips))
    _paint_mouth(texture, texels[60:68], _to_texels(np.concatenate([xy[60:65], xy[[64, 63, 62, 61, 60]] - [0, 0.0045]])))
    cv2.polylines(texture, [texels[60:68]], True, _rgb(lips, 0.45), 2, cv2.LINE_AA, shift=4)


def _region(polygon: np.ndarray, margin: int = 2) -> tuple[slice, slice, np.ndarray]:
    """The texel rows and columns around a fixed-point polygon, and the polygon moved into that window."""
    low = np.maximum(polygon.min(0) // 16 - margin, 0)
    high = np.minimum(polygon.max(0) // 16 + margin + 1, [TEXTURE_SHAPE[1], TEXTURE_SHAPE[0]])
    return slice(low[1], high[1]), slice(low[0], high[0]), polygon - low * 16


def _blend(window: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """window = window (1 - alpha) + colour alpha, in place; alpha uint8 [h, w] (255 = all colour)."""
    a = alpha[..., None].astype(np.float32) / 255
    window[:] = (window * (1 - a) + colour * a + 0.5).astype(np.uint8)


def _paint_eye(texture: np.ndarray, identity: HeadIdentity, eye: np.ndarray, centre: np.ndarray) -> None:
    """White, iris and pupil clipped to the lids, then dark lid lines (the upper one thick, like lashes)."""
    rows, cols, lids = _region(eye, margin=4)
    window = texture[rows, cols]
    middle = tuple(int(v) for v in centre - [cols.start * 16, rows.start * 16])
    colour = np.empty((*window.shape[:2], 3), np.float32)
    colour[:] = np.array([0.93, 0.91, 0.88]) * 255
    iris = np.zeros(window.shape[:2], np.uint8)
    cv2.circle(iris, middle, int(0.0058 / TEXEL * 16), 255, -1, cv2.LINE_AA, 4)
    _blend(colour, iris, np.asarray(identity.iris, np.float32) * 255)
    pupil = np.zeros_like(iris)
    cv2.circle(pupil, middle, int(0.0026 / TEXEL * 16), 255, -1, cv2.LINE_AA, 4)
    _blend(colour, pupil, np.float32(12))
    opening = np.zeros_like(iris)
    cv2.fillPoly(opening, [lids], 255, cv2.LINE_AA, shift=4)
    _blend(window, opening, colour)
    cv2.polylines(window, [lids[[0, 1, 2, 3]]], False, (25, 18, 15), 4, cv2.LINE_AA, shift=4)
    cv2.polylines(window, [lids[[3, 4, 5, 0]]], False, _rgb(identity.skin, 0.45), 2, cv2.LINE_AA, shift=4)


def _paint_mouth(texture: np.ndarray, inner: np.ndarray, teeth_band: np.ndarray) -> None:
    """The inside of the mouth (dark), with teeth along the upper lip, within the inner lip line."""
    rows, cols, inside = _region(inner)
    window = texture[rows, cols]
    shift = np.array([cols.start * 16, rows.start * 16])
    teeth = np.zeros(window.shape[:2], np.uint8)
    cv2.fillPoly(teeth, [teeth_band - shift], 255, cv2.LINE_AA, shift=4)
    colour = np.empty((*window.shape[:2], 3), np.float32)
    colour[:] = (60, 18, 20)
    _blend(colour, teeth, np.array([235, 230, 215], np.float32))
    opening = np.zeros_like(teeth)
    cv2.fillPoly(opening, [inside], 255, cv2.LINE_AA, shift=4)
    _blend(window, opening, colour)


# --------------------------------------------------------------------------------------------------------------
# Ray casting


_RAYS: dict[Camera, torch.Tensor] = {}
FRAMES_PER_PASS = 4  # frames ray-cast together: keeps the per-pixel arrays within the CPU's caches


def _camera_rays(camera: Camera) -> torch.Tensor:
    """Ray directions [P, 3] in camera space for every pixel, row by row (cached per camera)."""
    if camera not in _RAYS:
        coords = torch.arange(camera.size, dtype=torch.float32) - camera.centre
        v, u = torch.meshgrid(coords, coords, indexing="ij")
        _RAYS[camera] = torch.stack([u / camera.focal, -v / camera.focal, -torch.ones_like(u)], -1).reshape(-1, 3)
    return _RAYS[camera]


def _intersect(solid: Ellipsoid, origin: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(near, far) ray parameters [B, P] of rays origin [B, 1, 3] + t direction [B, P, 3]; inf where they miss."""
    to_local = torch.as_tensor(solid.rotation / solid.axes[None, :], dtype=torch.float32)  # rotate, then scale
    o = (origin - torch.as_tensor(solid.centre, dtype=torch.float32)) @ to_local
    d = direction @ to_local
    a = (d * d).sum(-1)
    b = (o * d).sum(-1)
    disc = b * b - a * ((o * o).sum(-1) - 1)
    root = disc.clamp_min(0).sqrt_()
    miss = disc <= 0
    return ((-b - root) / a).masked_fill_(miss, float("inf")), ((root - b) / a).masked_fill_(miss, float("inf"))


def _gradient(solid: Ellipsoid, points: torch.Tensor) -> torch.Tensor:
    """Outward (unnormalised) normals of an ellipsoid at surface points [N, 3]."""
    rotation = torch.as_tensor(solid.rotation, dtype=torch.float32)
    metric = rotation @ torch.diag(torch.as_tensor(1 / solid.axes**2, dtype=torch.float32)) @ rotation.T
    return (points - torch.as_tensor(solid.centre, dtype=torch.float32)) @ metric


def _hair_mask(style: str, points: torch.Tensor) -> torch.Tensor:
    """Which points [..., 3] of the hair shell carry hair, for a style (see HAIR_LINES)."""
    x, y, z = points.unbind(-1)
    front_height, temple_drop, back_height = HAIR_LINES[style]
    if style == "bald":
        return (z < -0.03) & (y < 0.03) & (y > back_height)
    frontness = (z / 0.04).clamp(0, 1)
    hairline = back_height + (front_height - temple_drop * x * x - back_height) * frontness
    return y > hairline


def _ray_cast(identity: HeadIdentity, params: np.ndarray, textures: np.ndarray, camera: Camera) -> np.ndarray:
    frames = np.empty((len(params), camera.size, camera.size, 3), np.uint8)
    with torch.no_grad():
        for start in range(0, len(params), FRAMES_PER_PASS):
            chunk = slice(start, start + FRAMES_PER_PASS)
            frames[chunk] = _ray_cast_frames(identity, params[chunk], textures[chunk], camera)
    return frames


SKULL, NOSE, HAIR_FRONT, HAIR_BACK, NECK = range(5)  # what a pixel's ray meets first


def _ray_cast_frames(identity: HeadIdentity, params: np.ndarray, textures: np.ndarray, camera: Camera) -> np.ndarray:
    """A few frames [B, S, S, 3]: find each ray's first surface, then colour the pixels that meet one."""
    geometry = _geometry(identity)
    rotation = torch.from_numpy(rotation_matrix(params[:, 0], params[:, 1], params[:, 2]))  # [B, 3, 3]
    rays = _camera_rays(camera)
    eye = torch.tensor([0.0, 0.0, camera.distance])
    # into head coordinates, p = R^T (q - position); with row vectors that is (q - position) @ R
    origin = ((eye - torch.as_tensor(HEAD_POSITION, dtype=torch.float32)) @ rotation)[:, None, :]  # [B, 1, 3]
    direction = rays[None] @ rotation  # [B, P, 3]

    skull, _ = _intersect(geometry.skull, origin, direction)
    nose, _ = _intersect(geometry.nose, origin, direction)
    hair_near, hair_far = _intersect(geometry.hair, origin, direction)
    at = lambda t: origin + t.clamp(max=10.0)[..., None] * direction  # noqa: E731
    hair_front = hair_near.masked_fill(~_hair_mask(identity.hair_style, at(hair_near)), float("inf"))
    hair_back = hair_far.masked_fill(~_hair_mask(identity.hair_style, at(hair_far)), float("inf"))
    neck, _ = _intersect(NECK_SOLID, eye[None, None], rays[None])
    neck = neck.masked_fill(eye[1] + neck * rays[:, 1] > NECK_TOP, float("inf"))
    depth, which = torch.stack([skull, nose, hair_front, hair_back, neck.expand_as(skull)]).min(0)

    # from here on only the pixels that meet a surface, as flat lists
    pixels = torch.isfinite(depth).reshape(-1).nonzero()[:, 0]
    frame_of = pixels // rays.shape[0]
    which = which.reshape(-1)[pixels]
    points = origin[frame_of, 0] + depth.reshape(-1)[pixels, None] * direction.reshape(-1, 3)[pixels]
    normal = torch.empty_like(points)
    albedo = torch.empty_like(points)
    skin = torch.as_tensor(identity.skin, dtype=torch.float32)
    for kind, solid, sign in ((SKULL, geometry.skull, 1), (NOSE, geometry.nose, 1), (HAIR_FRONT, geometry.hair, 1),
                              (HAIR_BACK, geometry.hair, -1)):  # the back of the shell is seen from inside
        chosen = (which == kind).nonzero()[:, 0]
        normal[chosen] = sign * _gradient(solid, points[chosen])
    face = ((which <= NOSE) & (points[:, 2] > 0)).nonzero()[:, 0]
    albedo[:] = skin
    albedo[face] = _sample(textures, frame_of[face], points[face])
    hair = (which == HAIR_FRONT) | (which == HAIR_BACK)
    albedo[hair] = _hair_albedo(identity, points[hair])
    normal = (normal[:, None, :] @ rotation.transpose(1, 2)[frame_of])[:, 0]  # to camera space
    on_neck = (which == NECK).nonzero()[:, 0]
    neck_points = eye + depth.reshape(-1)[pixels[on_neck], None] * rays[pixels[on_neck] % rays.shape[0]]
    normal[on_neck] = _gradient(NECK_SOLID, neck_points)
    albedo[on_neck] = skin * 0.8
    normal = F.normalize(normal, dim=-1)

    light = torch.as_tensor(LIGHT, dtype=torch.float32)
    colour = albedo * (AMBIENT + DIFFUSE * (normal @ light).clamp_min(0))[:, None]
    # a faint highlight on the skin, where it faces the half-way vector between light and viewer
    half = F.normalize(light + torch.tensor([0.0, 0.0, 1.0]), dim=0)
    colour += ((which <= NOSE) * 0.12 * (normal @ half).clamp_min(0) ** 24)[:, None]
    image = _background(identity, camera).repeat(len(params), 1)
    image[pixels] = colour
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).reshape(len(params), camera.size, camera.size, 3).numpy()


def _sample(textures: np.ndarray, frame: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear texture colours [N, 3] in [0, 1] at head points [N, 3] (their x, y), clamped at the edges."""
    height, width = TEXTURE_SHAPE
    u = ((points[:, 0] - TEXTURE_X[0]) / TEXEL).clamp(0, width - 1.001)
    v = ((TEXTURE_Y[1] - points[:, 1]) / TEXEL).clamp(0, height - 1.001)
    u0, v0 = u.long(), v.long()
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    flat = torch.from_numpy(textures).reshape(-1, 3)
    index = (frame * height + v0) * width + u0
    top = flat[index].float() * (1 - fu) + flat[index + 1].float() * fu
    bottom = flat[index + width].float() * (1 - fu) + flat[index + width + 1].float() * fu
    return (top * (1 - fv) + bottom * fv) / 255


def _hair_albedo(identity: HeadIdentity, points: torch.Tensor) -> torch.Tensor:
    """Hair colour with fine strands: stripes running from the crown, varying with the angle around it."""
    x, y, z = points.unbind(-1)
    angle = torch.atan2(x, z + 0.02) * 40 + torch.atan2(y - 0.12, torch.hypot(x, z)) * 6
    strands = 0.85 + 0.15 * torch.sin(angle) * torch.sin(angle * 0.37 + 1.0)
    return torch.tensor(identity.hair) * strands[..., None]


@lru_cache(maxsize=16)
def _geometry(identity: HeadIdentity) -> HeadGeometry:
    return head_geometry(identity)


@lru_cache(maxsize=16)
def _background(identity: HeadIdentity, camera: Camera) -> torch.Tensor:
    """The identity's vertical colour gradient [P, 3], with a soft vignette."""
    top, bottom = (torch.tensor(c) for c in identity.background)
    rows = top + (bottom - top) * torch.linspace(0, 1, camera.size)[:, None]  # [S, 3]
    r = torch.linspace(-1, 1, camera.size)
    vignette = 1 - 0.12 * (r[:, None] ** 2 + r[None, :] ** 2)
    return (rows[:, None, :] * vignette[..., None]).reshape(-1, 3)
