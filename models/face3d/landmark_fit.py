"""The offline Net3D for real photographs: a 3D landmark model fitted to 68 landmarks by batched Levenberg-Marquardt.

What is fitted, per face (24 unknowns):

    rotation      axis-angle (3) of the head; read as yaw, pitch, roll in degrees with DECA's reading
                  (`models.flame.euler_from_axis_angle`): the pose of a generic head, not of FLAME's
    translation   (3) the head's origin relative to the camera, metres
    shape         the 6 `models.synth.head.SHAPE_NAMES` coefficients (head width, face length, ...)
    jaw           radians of jaw opening (the synthetic head's unit, which follows DECA's pose[3])
    exp           the 11 `models.synth.head.EXPRESSION_NAMES` coefficients: the synthetic head's expression units,
                  NOT DECA's FLAME coefficients (same layout and column names, other meaning)

The landmark model is the synthetic head of `models.synth.head`: the mean identity's neutral 68 points, plus its jaw
and expression bases (linear, as in the head), plus a linear shape basis taken by central differences of
`head_geometry` around the mean identity. On renders of the synthetic world it is therefore the true model, up to
the identity-dependence of the jaw/expression bases.

Camera: a pinhole with the synthetic renderer's field of view (`models.synth.render.CAMERA`: focal 850 px for a
256 px frame, scaled with the image's longer side; principal point at the image centre). Depth is free, so the
perspective is exact on renders and 256 px crops and mild on photographs (a head seen from about 1 m).

Residuals are landmark errors in percent of the face's landmark extent (the 17 contour points count a quarter: dlib
places them least reliably, on the silhouette that slides over the face as it turns, and on renders 5 % of the face
higher than the head's own contour, which turns into pitch), plus Gaussian priors that keep shape and
expression coefficients small where the landmarks do not tell them (e.g. `mouth_stretch` and `lip_pucker`, whose
landmark motions are exact opposites in the current head: only their difference is observable). Three starts
(yaw -30, 0, +30) per face; the lowest cost wins. A face whose landmarks are missing, or whose best fit leaves an
RMS error above `max_rms_percent`, is reported found=False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from models.directions import NUM_EXPRESSIONS, FaceParams
from models.face3d.base import Face3DEstimate
from models.face3d.landmark_source import LandmarkSource, fill_missing
from models.flame import axis_angle_to_matrix, euler_from_axis_angle
from models.synth.head import (EXPRESSION_BASIS, JAW_BASIS, LANDMARKS_3D, SHAPE_NAMES, HeadIdentity, head_geometry)
from models.synth.camera import CAMERA

SHAPE_SIZE = len(SHAPE_NAMES)
NUM_UNKNOWNS = 3 + 3 + SHAPE_SIZE + 1 + NUM_EXPRESSIONS  # rotation, translation, shape, jaw, expressions
CONTOUR = slice(0, 17)
SHAPE_STEP = 0.1  # coefficient step of the finite differences that make the shape basis
JACOBIAN_STEP = 1e-6  # central differences in float64: ~1e-10 relative error, far below what LM needs


@dataclass(frozen=True)
class LandmarkModel:
    """68 points [68, 3] (metres, head coordinates) = mean + shape @ shape_basis + jaw * jaw_basis + exp @ exp_basis."""

    mean: torch.Tensor  # [68, 3]
    shape_basis: torch.Tensor  # [6, 68, 3]
    jaw_basis: torch.Tensor  # [68, 3]
    expression_basis: torch.Tensor  # [11, 68, 3]

    def points(self, shape: torch.Tensor, jaw: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        """[..., 68, 3] for shape [..., 6], jaw [...], exp [..., 11]."""
        return (self.mean + torch.einsum("...s,snc->...nc", shape, self.shape_basis)
                + jaw[..., None, None] * self.jaw_basis + torch.einsum("...e,enc->...nc", exp, self.expression_basis))


@lru_cache(maxsize=1)
def synthetic_head_model() -> LandmarkModel:
    """The synthetic head as a linear landmark model (float64)."""
    differences = []
    for k in range(SHAPE_SIZE):
        step = np.zeros(SHAPE_SIZE)
        step[k] = SHAPE_STEP
        plus = head_geometry(HeadIdentity(seed=0, shape=tuple(step))).landmarks
        minus = head_geometry(HeadIdentity(seed=0, shape=tuple(-step))).landmarks
        differences.append((plus - minus) / (2 * SHAPE_STEP))
    as_tensor = lambda array: torch.as_tensor(np.asarray(array), dtype=torch.float64)  # noqa: E731
    return LandmarkModel(as_tensor(LANDMARKS_3D), as_tensor(np.stack(differences)), as_tensor(JAW_BASIS),
                         as_tensor(EXPRESSION_BASIS))


@dataclass(frozen=True)
class FitSettings:
    iterations: int = 25
    start_yaws: tuple[float, ...] = (-30.0, 0.0, 30.0)
    contour_weight: float = 0.25
    shape_sigma: float = 0.5  # prior standard deviations, in coefficient units
    jaw_sigma: float = 0.3
    expression_sigma: float = 0.6
    prior_weight: float = 1.0  # one sigma costs as much as a 1 % error of one landmark coordinate
    max_rms_percent: float = 6.0  # worse fits are reported as not found
    coefficient_bound: float = 1.5  # expressions and shape are clamped to +-this after every step
    jaw_bounds: tuple[float, float] = (-0.05, 0.5)


@dataclass(frozen=True)
class LandmarkFit:
    """The fitted unknowns of B faces and how well they explain the landmarks."""

    rotation: torch.Tensor  # [B, 3] axis-angle
    translation: torch.Tensor  # [B, 3] metres
    shape: torch.Tensor  # [B, 6]
    jaw: torch.Tensor  # [B]
    exp: torch.Tensor  # [B, 11]
    projected: torch.Tensor  # [B, 68, 2] the fitted model's landmarks in image pixels
    rms_percent: torch.Tensor  # [B] RMS landmark error, percent of the landmark extent

    def params(self) -> FaceParams:
        yaw, pitch, roll = euler_from_axis_angle(self.rotation).unbind(-1)
        return FaceParams(yaw, pitch, roll, self.jaw, self.exp)


def _split(theta: torch.Tensor):
    rotation, translation, shape, jaw, exp = theta.split([3, 3, SHAPE_SIZE, 1, NUM_EXPRESSIONS], dim=-1)
    return rotation, translation, shape, jaw[..., 0], exp


def project_model(theta: torch.Tensor, model: LandmarkModel, focal: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Image pixels [..., 68, 2] of the model with unknowns theta [..., 24] (pinhole; y down in the image)."""
    rotation, translation, shape, jaw, exp = _split(theta)
    camera = model.points(shape, jaw, exp) @ axis_angle_to_matrix(rotation).transpose(-1, -2)
    depth = translation[..., None, 2] - camera[..., 2]
    u = centre[..., None, 0] + focal[..., None] * (camera[..., 0] + translation[..., None, 0]) / depth
    v = centre[..., None, 1] - focal[..., None] * (camera[..., 1] + translation[..., None, 1]) / depth
    return torch.stack([u, v], dim=-1)


class LandmarkFitter:
    """Batched Levenberg-Marquardt of `LandmarkModel` to 68 observed landmarks per face."""

    def __init__(self, settings: FitSettings = FitSettings(), model: LandmarkModel | None = None):
        self.settings = settings
        self.model = model or synthetic_head_model()
        weights = torch.ones(68, dtype=torch.float64)
        weights[CONTOUR] = settings.contour_weight
        self.weights = weights
        s = settings
        self.prior_scale = s.prior_weight / torch.tensor(
            [s.shape_sigma] * SHAPE_SIZE + [s.jaw_sigma] + [s.expression_sigma] * NUM_EXPRESSIONS, dtype=torch.float64)

    def _residuals(self, theta, observed, focal, centre, percent_per_pixel):
        """Residuals [N, (K,) M] of unknowns theta [N, (K,) 24]; the other arguments are per problem [N, ...]."""
        extra = theta.ndim - 2  # a probe dimension K, when the Jacobian evaluates many thetas per problem

        def per_problem(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[:1] + (1,) * extra + t.shape[1:])

        projected = project_model(theta, self.model, per_problem(focal), per_problem(centre))
        error = (projected - per_problem(observed)) * per_problem(percent_per_pixel)[..., None, None]
        return torch.cat([(error * self.weights[:, None]).flatten(-2), theta[..., 6:] * self.prior_scale], dim=-1)

    def _jacobian(self, theta, *args) -> torch.Tensor:
        """[N, M, 24] by central differences, all 48 probes of all problems in one evaluation."""
        steps = torch.eye(NUM_UNKNOWNS, dtype=theta.dtype) * JACOBIAN_STEP
        probes = torch.cat([theta[:, None] + steps, theta[:, None] - steps], dim=1)
        plus, minus = self._residuals(probes, *args).split(NUM_UNKNOWNS, dim=1)
        return ((plus - minus) / (2 * JACOBIAN_STEP)).transpose(1, 2)

    def initial(self, observed: torch.Tensor, focal: torch.Tensor, centre: torch.Tensor, yaw: float) -> torch.Tensor:
        """Unknowns [B, 24] of the mean head turned by `yaw`, placed and sized by the landmarks' box."""
        mean = self.model.mean
        model_height = mean[:, 1].max() - mean[:, 1].min()
        height = observed[..., 1].amax(-1) - observed[..., 1].amin(-1)
        distance = focal * model_height / height.clamp_min(1.0)
        middle = (observed.amax(-2) + observed.amin(-2)) / 2
        model_middle = (mean.amax(0) + mean.amin(0)) / 2
        theta = observed.new_zeros(len(observed), NUM_UNKNOWNS)
        theta[:, 1] = -math.radians(yaw)  # DECA's reading: a turn by +t about y reads as yaw -t
        theta[:, 3] = (middle[:, 0] - centre[:, 0]) * distance / focal - model_middle[0]
        theta[:, 4] = (centre[:, 1] - middle[:, 1]) * distance / focal - model_middle[1]
        theta[:, 5] = distance
        return theta

    def _clamp(self, theta: torch.Tensor) -> torch.Tensor:
        s = self.settings
        bound = s.coefficient_bound
        shape = theta[:, 6:6 + SHAPE_SIZE].clamp(-bound, bound)
        jaw = theta[:, 6 + SHAPE_SIZE:7 + SHAPE_SIZE].clamp(*s.jaw_bounds)
        exp = theta[:, 7 + SHAPE_SIZE:].clamp(-bound, bound)
        depth = theta[:, 5:6].clamp_min(0.05)
        return torch.cat([theta[:, :5], depth, shape, jaw, exp], dim=1)

    @torch.no_grad()
    def fit(self, observed: torch.Tensor, image_size: tuple[int, int]) -> LandmarkFit:
        """Fit landmarks [B, 68, 2] (image pixels, all finite) of images of image_size (height, width)."""
        observed = observed.to(torch.float64)
        batch, starts = len(observed), len(self.settings.start_yaws)
        height, width = image_size
        focal = torch.full((batch,), CAMERA.focal * max(height, width) / CAMERA.size, dtype=torch.float64)
        centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64).expand(batch, 2)
        extent = (observed.amax(-2) - observed.amin(-2)).amax(-1).clamp_min(1.0)
        # every start of every face is one problem of a batch of starts * B
        theta = torch.cat([self.initial(observed, focal, centre, yaw) for yaw in self.settings.start_yaws])
        args = (observed.repeat(starts, 1, 1), focal.repeat(starts), centre.repeat(starts, 1),
                (100 / extent).repeat(starts))
        theta, cost = self._levenberg_marquardt(theta, args)
        best = cost.view(starts, batch).argmin(0) if batch else cost.new_zeros(0, dtype=torch.long)
        theta = theta.view(starts, batch, NUM_UNKNOWNS)[best, torch.arange(batch)]
        projected = project_model(theta, self.model, focal, centre)
        rms = ((projected - observed).square().sum(-1).mean(-1).sqrt() * 100 / extent)
        rotation, translation, shape, jaw, exp = _split(theta)
        return LandmarkFit(rotation, translation, shape, jaw, exp, projected, rms)

    def _levenberg_marquardt(self, theta: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
        damping = torch.full((len(theta),), 1e-2, dtype=theta.dtype)
        residual = self._residuals(theta, *args)
        cost = residual.square().sum(-1)
        for _ in range(self.settings.iterations):
            jacobian = self._jacobian(theta, *args)  # [N, M, 24]
            normal = jacobian.transpose(1, 2) @ jacobian
            gradient = (jacobian.transpose(1, 2) @ residual[..., None])[..., 0]
            diagonal = torch.diagonal(normal, dim1=1, dim2=2)
            damped = normal + torch.diag_embed(damping[:, None] * diagonal + 1e-9)
            step = torch.linalg.solve(damped, -gradient)
            candidate = self._clamp(theta + step)
            candidate_residual = self._residuals(candidate, *args)
            candidate_cost = candidate_residual.square().sum(-1)
            better = torch.isfinite(candidate_cost) & (candidate_cost < cost)
            theta = torch.where(better[:, None], candidate, theta)
            residual = torch.where(better[:, None], candidate_residual, residual)
            cost = torch.where(better, candidate_cost, cost)
            damping = torch.where(better, damping / 3, damping * 4).clamp(1e-7, 1e7)
        return theta, cost


class LandmarkFitBackend:
    """`Face3DBackend` by fitting the synthetic head's landmark model to 68 landmarks (given, or dlib's)."""

    name = "landmark-fit"
    shape_size = SHAPE_SIZE

    def __init__(self, settings: FitSettings = FitSettings(), landmarks: LandmarkSource | None = None):
        self.fitter = LandmarkFitter(settings)
        self.landmarks = landmarks or LandmarkSource()

    def estimate(self, images: np.ndarray, landmarks: np.ndarray | None = None) -> Face3DEstimate:
        images = np.asarray(images)
        points, found = self.landmarks.resolve(images, landmarks)
        height, width = images.shape[1:3]
        fit = self.fitter.fit(torch.from_numpy(fill_missing(points, found, height, width)), (height, width))
        params = fit.params()
        good = (torch.from_numpy(found) & (fit.rms_percent <= self.fitter.settings.max_rms_percent)
                & torch.isfinite(params.to_vector()).all(-1))
        return Face3DEstimate(
            params=FaceParams(*(part.float() for part in (params.yaw, params.pitch, params.roll, params.jaw,
                                                           params.exp))),
            shape=fit.shape.float(),
            landmarks=fit.projected.float(),
            found=good,
        )
