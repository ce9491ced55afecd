"""train-directions: the direction matrix A (`models.directions.DirectionMatrix`) with G and the Net3D frozen, in the
paper's three phases (official `libs/trainer.py`: `train`, `train_real`, `train_paired`).

    reenacted = G(trunc(w_source + A(Δp)))          Δp = target - source parameters in shift units
    phase 'synthetic'  source and target W+ both from z ~ N(0, I) through G's mapping (as the official code)
    phase 'real'       source W+ of a store frame (its `inversion/` stage, or the encoder on its crop) and its
                       `face3d/` parameters; target sampled from G
    phase 'paired'     source and target are two frames of one clip of the store, with their stored W+ and face3d
                       parameters; the real target frame is compared with the reenacted image (pixel L1)

In the synthetic and real phases the second half of each batch (`one_direction_fraction`) moves one random
direction only: Δp is one-hot, the source's coordinate moved to a value drawn uniformly in ±shift_scale (the
official `make_shift_vector_50`), and the ground truth is the source's parameters with that one value changed.
The paired phase uses the whole target, as the official one does (there is no real frame of a one-direction face).

    loss = shape_weight    * shape(Net3D(reenacted), truth)              the "3DMM shape" term, see below
         + mouth_weight    * mean |d_mouth(reenacted) - d_mouth(truth)|   distances of lip landmark pairs
         + eye_weight      * mean |d_eye(reenacted) - d_eye(truth)|       distances of eyelid landmark pairs
         + identity_weight * (1 - cos ArcFace(reenacted, reference))      reference: source (target when paired)
         + lpips_weight    * LPIPS(reenacted, reference)
         + pixel_weight    * mean |reenacted - real target|               paired phase only

The Net3D (`face3d`) reads G's images differentiably (A is trained through it; it stays frozen), and its face model
turns parameters into the landmarks of the mouth and eye terms:
- `deca` (the paper's): DECA's E_flame on DECA's landmark crop at 224, its code mapped to the 15 parameters as the
  deca backend maps it, and FLAME (`DecaNet3D`). The truth face is FLAME of the truth's parameters with the
  source's identity (the target's when paired, as the official `calculate_losses_paired`); the reenacted face is
  FLAME of its own reading, identity included. shape = mean L1 of their vertices, landmarks = FLAME's 68 (dynamic
  contour), both under the official loss camera (orthographic, scale 8, no shift) in pixels of DECA's 224 image:
  the official `calculate_shape_loss` and `landmarks2d`. Weights: registry 'deca', 'flame' (+ its landmark
  embedding) in `weights_dir`; the store's face3d stage must be DECA's, with its 100 identity columns.
- `synth-regressor` (the synthetic world's, `SynthNet3D`): the world has no FLAME mesh, so shape = mean L1 of the
  15 parameters in A's shift units (every coordinate spans ±shift_scale), or with `synth_shape=landmarks` of the
  head's 68 posed 3D landmarks (the vertex L1's analogue: a parameter counts by how far it moves the face, so the
  readings of expressions too small to see do not weigh like the pose), and the 68 landmarks come from the
  synthetic head (`models.synth.head`: base + jaw * jaw basis + expressions @ expression basis, posed and
  projected by the renderer's camera, mean identity), pair distances in units of half the 256 frame.

What differs from the paper, and why:
- DECA's crop: the official code places it on FAN's 68 landmarks of each image. G's images come with none, so a
  first E_flame pass without gradients reads the face where aligned crops put it (`aligned_face_box`), and
  the crop is placed on that reading's 68 FLAME landmarks projected back into the image by its camera; the second
  pass is the one gradients go through. Both passes are batched (the official code runs DECA image by image).
- The FLAME faces of the DECA terms are built from the 15 parameters A drives, plus identity: head rotation from
  yaw, pitch, roll (the exact inverse of DECA's reading of its global pose), jaw opening = pose[3], the first 11
  expressions. The other 39 expressions, the jaw's two other axes, neck and eyes are zero in both faces, where the
  official code keeps DECA's full codes (the target's or the source's for the truth). So the term does not penalise
  changes of coefficients A has no direction for; the store keeps only the 15 and the identity of real frames.
- A landmark pair's distance is Euclidean; the official code compares |dx| and |dy| of a pair separately (mean
  over the two), so there a roll of the head alone changes the mouth and eye terms, here it does not.
- Identity needs ArcFace (`arcface-ir-se50`, not shipped): without the file its weight becomes 0 and the run says
  so. LPIPS defaults to weight 0 (its AlexNet trunk is not shipped; see `training.encoder`).
- G renders with its stored noise maps (as inference does); the official training draws fresh noise.

Checkpoints hold the official `A_matrix.pt` entries (`A_matrix`, `learned_directions`, `shift_scale`, `w_plus`,
`num_layers_shift`, `shift_dim`) plus `A_optim`, `ranges` and the loop's resume state; the safetensors exports
carry `shift_scale` and the `ranges` table in their entries, which `tasks.reenact` reads for the `demo` set.

    python -m training.directions --config dirs.yaml generator=outputs/train-generator/generator.safetensors
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from models import MissingWeightsError
from models.deca import INPUT_SIZE as DECA_INPUT_SIZE, DecaCode, ResnetEncoder, deca_input
from models.directions import (NUM_EXPRESSIONS, NUM_PARAMS, SHIFT_SCALE, DirectionMatrix, ParamRanges, ShiftMap,
                               to_checkpoint, RANGES_PATH, shift_wplus)
from models.e4e import Encoder4Editing
from models.images import resize_to
from models.face3d.deca_backend import crop_to_image, face_params
from models.face3d.regressor import CROP_PER_EXTENT, Face3DRegressor, regressor_input
from models.flame import FLAME, N_EXPRESSION, N_SHAPE, FlameOutput, axis_angle_to_matrix, orthographic_projection
from models.reenact import Reenactor
from models.synth.camera import CAMERA, HEAD_POSITION
from models.synth.head import EXPRESSION_BASIS, JAW_BASIS, LANDMARKS_3D
from storage import networks
from storage.store import ClipKey, ClipStore
from storage.weights import WeightsRegistry
from training.common.checkpoints import Export, load_into, read_weights
from training.common.config import TrainingConfig, command_line, load_config
from training.common.distributed import Distributed, wrap
from training.common.loop import Amp, Stage, TrainingSummary, adam, optimise, requires_grad, train
from training.data import StoreCrops, to_device, to_model_range
from training.encoder import frozen_generator, identity_distance, perceptual_distance

PHASES = ("synthetic", "real", "paired")
Phase = Literal["synthetic", "real", "paired"]
# landmark pairs whose distances the official mouth and eye losses compare (iBUG 68 order)
MOUTH_PAIRS = ((48, 54), (60, 64), (49, 59), (50, 58), (51, 57), (52, 56), (53, 55), (61, 67), (62, 66), (63, 65))
EYE_PAIRS = ((36, 39), (37, 41), (38, 40), (42, 45), (43, 47), (44, 46))
FRAME = 256  # the frame the synthetic head's landmarks are in (the store's crops, the renderer's camera)
# the official shape, mouth and eye terms project FLAME with the fixed camera (scale 8, no shift) into DECA's 224 image
DECA_LOSS_CAMERA_SCALE = 8.0


class DirectionsTrainingConfig(TrainingConfig):
    """train-directions' settings; the official recipe except where the module docstring says why not."""

    out: str = Field("outputs/train-directions", description="Run directory (checkpoints, logs, samples, the export).")
    steps: int = Field(30_000, ge=1, description="Optimiser steps of the whole run (the phases' steps, then more of the last phase).")
    batch_size: int = Field(12, ge=2, description="Pairs per step and process (official: 12).")
    synthetic_steps: int = Field(10_000, ge=0, description="Steps of phase (i): source and target both sampled from G.")
    real_steps: int = Field(10_000, ge=0, description="Steps of phase (ii): a real source from the store, a synthetic target.")
    paired_steps: int = Field(10_000, ge=0, description="Steps of phase (iii): source and target frames of one clip, plus pixel L1.")
    generator: str = Field("demo-generator", description="The frozen G: a weights-registry name, or a .safetensors / official .pt file ('g_ema').")
    weights_dir: str | None = Field(None, description="Weights directory for registry names (generator, encoder, ArcFace, LPIPS's AlexNet).")
    face3d: Literal["synth-regressor", "deca"] = Field("synth-regressor", description="The differentiable Net3D that reads the reenacted faces: the synthetic world's regressor, or the paper's DECA E_flame with FLAME (registry 'deca', 'flame', 'flame-landmark-embedding' in weights_dir). The store's face3d stage must be of this backend.")
    face3d_weights: str | None = Field(None, description="face3d=synth-regressor: the regressor's weights file (default: the one shipped in models/data). DECA and FLAME come from the weights registry.")
    real_source: Literal["inversion", "encoder"] = Field("inversion", description="W+ of real frames: the store's inversion stage, or the encoder run on the crop now.")
    encoder: str = Field("demo-encoder", description="The encoder for real_source=encoder: a registry name or a .safetensors / .pt ('e') file.")
    ranges: str = Field("store", description="The table mapping jaw and expressions to shift units: 'store' (<store>/ranges-<face3d>.npy of encode-dataset), 'measure' (min/max over G's samples at start, the official extract_statistics), 'official' (models/data), or a .npy path.")
    ranges_samples: int = Field(1024, ge=2, description="G samples that ranges=measure reads.")
    shift_scale: float = Field(SHIFT_SCALE, gt=0, description="The shift units' span: ±shift_scale covers a parameter's range (official: 6).")
    num_layers_shift: int = Field(8, ge=1, description="W+ layers that A shifts (official: 8 of 14).")
    one_direction_fraction: float = Field(0.5, ge=0, le=1, description="Share of each synthetic/real batch whose Δp moves one random direction only (official: half).")
    truncation: float = Field(0.7, gt=0, le=1, description="Truncation of every rendered code towards G's mean w (official: 0.7).")
    mean_latent_samples: int = Field(4096, ge=1, description="z samples of G's mean w (as the Reenactor computes it, seed 0).")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (official: 1e-4).")
    weight_decay: float = Field(5e-4, ge=0, description="Adam weight decay (official: 5e-4).")
    shape_weight: float = Field(1.0, ge=0, description="Weight of the paper's 3DMM shape term: FLAME's vertex L1 with face3d=deca, the parameter L1 with synth-regressor (see the module docstring).")
    synth_shape: Literal["params", "landmarks"] = Field("params", description="face3d=synth-regressor: the shape term as the L1 of the 15 parameters in shift units (each counts alike), or of the synthetic head's 68 landmarks in 3D, posed, in units of half the frame (what FLAME's vertex L1 is for DECA: each parameter counts by how far it moves the face).")
    mouth_weight: float = Field(1.0, ge=0, description="Weight of the mouth landmark distances.")
    eye_weight: float = Field(1.0, ge=0, description="Weight of the eye landmark distances.")
    identity_weight: float = Field(10.0, ge=0, description="Weight of the ArcFace identity loss (official: 10); 0 with a note when model_ir_se50.pth is absent.")
    lpips_weight: float = Field(0.0, ge=0, description="Weight of LPIPS (official: 10); needs AlexNet's ImageNet weights.")
    lpips_random_backbone: bool = Field(False, description="Run the LPIPS term with a random AlexNet trunk (tests and timing; not LPIPS).")
    pixel_weight: float = Field(1.0, ge=0, description="Weight of the pixel L1 against the real target frame (paired phase).")
    validation_count: int = Field(16, ge=1, description="Fixed synthetic pairs whose parameter error is logged (val/param_l1).")
    sample_count: int = Field(6, ge=1, description="Pairs in the logged grid (source, target, reenacted).")

    @model_validator(mode="after")
    def _some_phase(self) -> DirectionsTrainingConfig:
        if not (self.synthetic_steps or self.real_steps or self.paired_steps):
            raise ValueError("at least one of synthetic_steps, real_steps, paired_steps must be > 0")
        if self.face3d == "deca" and self.face3d_weights:
            raise ValueError("face3d_weights is the synth-regressor's file; face3d=deca reads deca/deca_model.tar and "
                             "FLAME from weights_dir (the weights registry)")
        return self

    def phase_at(self, step: int) -> Phase:
        """The phase of 0-based `step`: the phases in order for their steps, then the last one that has steps."""
        end = 0
        for phase, steps in zip(PHASES, (self.synthetic_steps, self.real_steps, self.paired_steps)):
            end += steps
            if step < end:
                return phase
        return [phase for phase, steps in zip(PHASES, (self.synthetic_steps, self.real_steps, self.paired_steps))
                if steps][-1]

    def phases_run(self) -> set[Phase]:
        """The phases that some step before `steps` falls in."""
        starts, end = [], 0
        for steps in (self.synthetic_steps, self.real_steps, self.paired_steps):
            if steps and end < self.steps:
                starts.append(end)
            end += steps
        return {self.phase_at(step) for step in starts}


# ------------------------------------------------------------------------------------------- the training Net3D

def _rotation(params: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] head -> camera rotations Rz(roll) Ry(-yaw) Rx(pitch) of degrees (`models.synth.head.rotation_matrix`);
    also the exact inverse of DECA's reading of its global pose (`models.flame.euler_from_axis_angle`)."""
    yaw, pitch, roll = (torch.deg2rad(params[:, i]) for i in range(3))
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    cy, sy, cp, sp, cr, sr = torch.cos(-yaw), torch.sin(-yaw), torch.cos(pitch), torch.sin(pitch), torch.cos(roll), \
        torch.sin(roll)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


@dataclass
class Faces:
    """A batch of faces as the shape term compares them: the 15 parameters (their own units and A's shift units)
    and the Net3D's identity coefficients [B, shape_size]."""

    params: torch.Tensor  # [B, 15]
    shift: torch.Tensor  # [B, 15]
    shape: torch.Tensor  # [B, S]


def split_reading(reading: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Net3D reading (or a stored face3d row) [B, 15 + S] as the 15 parameters and the identity coefficients."""
    return reading[:, :NUM_PARAMS], reading[:, NUM_PARAMS:]


class SynthNet3D:
    """The synth-regressor as a differentiable Net3D, and the synthetic head as its face model.

    `read` gives the 15 parameters of G's images (gradients flow to the images); `landmarks` gives the 68 landmarks
    of a face with given parameters (the synthetic head's mean identity, posed and projected into the 256 frame),
    which is how the official code gets landmarks from DECA's codes through FLAME. The regressor's crop box is found
    by a first pass without gradients (a box around the head's landmarks of its first reading), then the image is
    read again inside that fixed box. The losses use no identity (`shape_size` 0: the mean head), and the shape term
    is the L1 of the parameters in shift units (this world has no mesh of its own beyond the 68 points).
    """

    name = "synth-regressor"
    shape_size = 0
    landmark_unit = FRAME / 2  # pair distances in units of half the frame

    def __init__(self, network: Face3DRegressor, device: torch.device, shape_term: str = "params"):
        self.network = network.to(device).eval()
        self.shape_term = shape_term
        requires_grad(self.network, False)
        self.base = torch.as_tensor(LANDMARKS_3D, device=device)
        self.jaw_basis = torch.as_tensor(JAW_BASIS, device=device)
        self.expression_basis = torch.as_tensor(EXPRESSION_BASIS, device=device)

        self.head_position = torch.as_tensor(HEAD_POSITION, dtype=torch.float32, device=device)
        self.frontal_box = self.boxes(self.landmarks(torch.zeros(1, NUM_PARAMS, device=device)))

    def camera_points(self, params: torch.Tensor) -> torch.Tensor:
        """[B, 68, 3] the mean head's landmarks for parameters [B, 15], posed in camera space (metres)."""
        points = (self.base + params[:, 3, None, None] * self.jaw_basis
                  + torch.einsum("be,enc->bnc", params[:, 4:], self.expression_basis))
        return points @ _rotation(params).transpose(1, 2) + self.head_position

    def landmarks(self, params: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 68, 2] pixels of the 256 frame for parameters [B, 15] (differentiable; the mean identity)."""
        camera = self.camera_points(params)
        depth = CAMERA.distance - camera[..., 2]
        u = CAMERA.centre + CAMERA.focal * camera[..., 0] / depth
        v = CAMERA.centre - CAMERA.focal * camera[..., 1] / depth
        return torch.stack([u, v], -1)

    @staticmethod
    def boxes(landmarks: torch.Tensor) -> torch.Tensor:
        """The regressor's crop square [B, 4] around landmarks (`models.face3d.regressor.crop_boxes`, in torch)."""
        low, high = landmarks.min(dim=1).values, landmarks.max(dim=1).values
        half = CROP_PER_EXTENT * (high - low).max(dim=1, keepdim=True).values / 2
        centre = (low + high) / 2
        return torch.cat([centre - half, centre + half], dim=1)

    def read(self, images: torch.Tensor) -> torch.Tensor:
        """Parameters [B, 15] of images [B, 3, S, S] in [-1, 1]."""
        pixels = (images.float().clamp(-1, 1) + 1) * 127.5
        scale = images.shape[-1] / FRAME
        with torch.no_grad():
            first = self.network(regressor_input(pixels, self.frontal_box.expand(len(images), -1) * scale))
            boxes = self.boxes(self.landmarks(first[:, :NUM_PARAMS])) * scale
        return self.network(regressor_input(pixels, boxes))[:, :NUM_PARAMS]

    def shape_distance(self, reenacted: Faces, truth: Faces) -> torch.Tensor:
        """Mean |reenacted - truth| of the 15 parameters in shift units, or (shape_term 'landmarks') of the posed
        3D landmarks in units of half the frame (metres times the camera's pixels per metre at the head)."""
        if self.shape_term == "landmarks":
            scale = CAMERA.focal / CAMERA.distance / self.landmark_unit
            return (self.camera_points(reenacted.params) - self.camera_points(truth.params)).abs().mean() * scale
        return (reenacted.shift - truth.shift).abs().mean()


def aligned_face_box(count: int, size: int, device: torch.device) -> torch.Tensor:
    """[count, 2, 2] corners standing in for the 68 landmarks of the face in an aligned crop of side `size`
    (`models.detect.align`: the crop is twice the landmarks' larger extent, centred a sixth of it above their box)."""
    from models.detect.align import CROP_PER_EXTENT as ALIGNED_CROP_PER_EXTENT, SHIFT_UP as ALIGNED_SHIFT_UP  # OpenCV

    extent = size / ALIGNED_CROP_PER_EXTENT
    centre = torch.tensor([size / 2, size / 2 + extent * ALIGNED_SHIFT_UP], device=device)
    corners = torch.stack([centre - extent / 2, centre + extent / 2])
    return corners.expand(count, -1, -1)


class DecaNet3D:
    """DECA's E_flame as a differentiable Net3D, and FLAME as its face model: the official training's Net3D.

    `read`: images in [-1, 1] to [0, 255], DECA's landmark crop (`models.deca.deca_input`, bilinear, so gradients
    reach the image) at 224, E_flame, and the 236-d code mapped to the 15 parameters as the deca backend maps it
    (`models.face3d.deca_backend.face_params`), then FLAME's 100 identity coefficients. The official code places
    the crop on FAN's 68 landmarks of each image; G's images have none, so a first pass without gradients reads the
    face in the box of an aligned crop (`aligned_face_box`) and the crop is placed on the 68 FLAME landmarks of that
    reading, projected with its camera back into the image (what `DecaBackend` reports as landmarks).

    `landmarks` and `vertices`: FLAME of the 15 parameters and an identity (head rotation Rz(roll) Ry(-yaw) Rx(pitch),
    jaw opening about x, the 11 expressions, the other 39 expressions, neck and eyes at zero), projected as the
    official losses project them: orthographic camera (8, 0, 0) in pixels of DECA's 224 image. The shape term is
    the mean L1 of those vertices (x, y, z), the official `calculate_shape_loss`.
    """

    name = "deca"
    shape_size = N_SHAPE
    landmark_unit = 1.0  # pixels of DECA's 224 image, as the official mouth and eye terms

    def __init__(self, encoder: ResnetEncoder, flame: FLAME, device: torch.device):
        self.encoder = encoder.to(device).eval()
        self.flame = flame.to(device).eval()
        requires_grad(self.encoder, False)
        requires_grad(self.flame, False)

    def _code(self, pixels: torch.Tensor, points: torch.Tensor) -> DecaCode:
        return DecaCode.from_vector(self.encoder(deca_input(pixels, points)))

    def read(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 15 + 100]: the 15 parameters and FLAME's identity coefficients of images [B, 3, S, S] in [-1, 1]."""
        pixels = (images.float().clamp(-1, 1) + 1) * 127.5
        with torch.no_grad():
            box = aligned_face_box(len(images), images.shape[-1], images.device)
            first = self._code(pixels, box)
            projected = orthographic_projection(self.flame(first.shape, first.exp, first.pose).landmarks, first.cam)
            points = crop_to_image(projected, box)
        code = self._code(pixels, points)
        return torch.cat([face_params(code).to_vector(), code.shape], dim=1)

    def _flame(self, params: torch.Tensor, shape: torch.Tensor) -> FlameOutput:
        jaw = F.pad(params[:, 3:4], (0, 2))  # axis-angle about x: DECA's pose[3]
        still = torch.eye(3, dtype=params.dtype, device=params.device).expand(len(params), 3, 3)
        # FLAME's joints: root (the head), neck, jaw, two eyes; DECA keeps neck and eyes still
        rotations = torch.stack([_rotation(params), still, axis_angle_to_matrix(jaw), still, still], dim=1)
        expression = F.pad(params[:, 4:], (0, N_EXPRESSION - NUM_EXPRESSIONS))
        return self.flame.from_rotations(shape, expression, rotations)

    @staticmethod
    def _official_frame(points: torch.Tensor) -> torch.Tensor:
        """FLAME points [B, N, 3] under the official loss camera, in pixels of DECA's image (y and z flipped)."""
        half = DECA_INPUT_SIZE / 2
        return points * points.new_tensor([1.0, -1.0, -1.0]) * DECA_LOSS_CAMERA_SCALE * half + half

    def landmarks(self, params: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """[B, 68, 2] FLAME's 68 landmarks (dynamic contour) of parameters [B, 15] and identity [B, 100]."""
        return self._official_frame(self._flame(params, shape).landmarks)[..., :2]

    def vertices(self, params: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """[B, V, 3] FLAME's vertices of parameters [B, 15] and identity [B, 100]."""
        return self._official_frame(self._flame(params, shape).vertices)

    def shape_distance(self, reenacted: Faces, truth: Faces) -> torch.Tensor:
        """Mean |reenacted - truth| of the FLAME vertices: each face with its own identity (the reenacted face's
        reading, the truth's source), as the official code."""
        difference = self.vertices(reenacted.params, reenacted.shape) - self.vertices(truth.params, truth.shape)
        return difference.abs().mean()


Net3D = SynthNet3D | DecaNet3D


def load_deca_net3d(registry: WeightsRegistry, device: torch.device) -> DecaNet3D:
    """E_flame ('deca') and FLAME ('flame', plus 'flame-landmark-embedding' for the .pkl) of the weights registry;
    every file is located before anything loads, so a missing one is named at once (MissingWeightsError)."""
    registry.path("deca")
    flame_model = networks.flame(registry)
    return DecaNet3D(registry.get(networks.DECA), flame_model, device)


def build_net3d(config: DirectionsTrainingConfig, device: torch.device) -> Net3D:
    registry = WeightsRegistry(config.weights_dir)
    if config.face3d == "deca":
        return load_deca_net3d(registry, device)
    spec = config.face3d_weights or networks.REGRESSOR
    return SynthNet3D(registry.load_spec(spec, expect=networks.REGRESSOR_BUILDER)[0], device, config.synth_shape)


# ------------------------------------------------------------------------------------------------------ losses

def pair_distances(landmarks: torch.Tensor, pairs: Sequence[tuple[int, int]], unit: float) -> torch.Tensor:
    """[B, P] distances of landmark pairs, in `unit`s of the landmarks' frame (the Net3D's `landmark_unit`)."""
    first, second = _pair_indices(tuple(pairs), landmarks.device)
    return (landmarks[:, first] - landmarks[:, second]).norm(dim=-1) / unit


@functools.cache
def _pair_indices(pairs: tuple[tuple[int, int], ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs' first and second landmark indices on `device`, made once (not copied to it every step)."""
    first, second = zip(*pairs)
    return torch.tensor(first, device=device), torch.tensor(second, device=device)


def pair_distance_error(landmarks: torch.Tensor, truth: torch.Tensor, pairs: Sequence[tuple[int, int]],
                        unit: float) -> torch.Tensor:
    """The mouth or eye term: mean |distance - truth's distance| over the landmark pairs."""
    return (pair_distances(landmarks, pairs, unit) - pair_distances(truth, pairs, unit)).abs().mean()


def face_terms(net3d: Net3D, images: torch.Tensor, truth: torch.Tensor, truth_shape: torch.Tensor,
               shift_map: ShiftMap) -> dict[str, torch.Tensor]:
    """The Net3D terms of images against the truth (shift units [B, 15], identity [B, S]): the shape term, and the
    mouth and eye landmark distances."""
    params, shape = split_reading(net3d.read(images))
    faces = Faces(params, shift_map.to_shift(params), shape)
    truth_faces = Faces(shift_map.from_shift(truth), truth, truth_shape)
    landmarks = net3d.landmarks(faces.params, faces.shape)
    truth_landmarks = net3d.landmarks(truth_faces.params, truth_faces.shape)
    unit = net3d.landmark_unit
    return {"shape": net3d.shape_distance(faces, truth_faces),
            "mouth": pair_distance_error(landmarks, truth_landmarks, MOUTH_PAIRS, unit),
            "eye": pair_distance_error(landmarks, truth_landmarks, EYE_PAIRS, unit)}


def one_direction_shift(source: torch.Tensor, count: int, shift_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Δp and truth (shift units, [count, 15]) moving one random direction of each source row [count, 15]: that
    coordinate goes to a value uniform in ±shift_scale (the official `make_shift_vector_50`). Draws from torch's
    global generator (checkpointed by the loop)."""
    direction = torch.randint(NUM_PARAMS, (count,), device=source.device)
    value = (torch.rand(count, device=source.device) * 2 - 1) * shift_scale
    rows = torch.arange(count, device=source.device)
    delta = torch.zeros_like(source)
    delta[rows, direction] = value - source[rows, direction]
    truth = source.clone()
    truth[rows, direction] = value
    return delta, truth


# ------------------------------------------------------------------------------------------- the store's frames

class StoreFrames:
    """The store frames phases (ii) and (iii) draw: those with a face3d reading of the training Net3D (and an
    inversion when W+ comes from the store), their parameters (the first `columns` of the stored reading: the 15,
    then the identity the Net3D's losses use) in memory, W+ and crops read when drawn."""

    def __init__(self, dataset: StoreCrops, backend: str, need_inversion: bool, columns: int = NUM_PARAMS):
        self.dataset = dataset
        store = ClipStore.open(dataset.root, create=False)
        self.params: dict[int, np.ndarray] = {}
        self.wplus: dict[int, Any] = {}
        rows, problems = [], []
        for number, key in enumerate(dataset.keys):
            attrs = store.stage_attrs(key, "face3d") or {}
            if attrs.get("backend") != backend:
                problems.append(f"{key}: face3d of {attrs.get('backend') or 'nobody'}")
                continue
            if need_inversion and store.stage_attrs(key, "inversion") is None:
                problems.append(f"{key}: no inversion")
                continue
            clip = store.clip(key)
            stage = clip.stage("face3d")
            if stage["params"].shape[1] < columns:
                problems.append(f"{key}: face3d has {stage['params'].shape[1]} columns, not {columns}")
                continue
            self.params[number] = np.asarray(stage["params"][:, :columns], np.float32)
            found = np.asarray(stage["found"][:], bool)
            if need_inversion:
                self.wplus[number] = clip.stage("inversion")["wplus"]
            items = np.flatnonzero(dataset.items[:, 0] == number)
            rows.append(items[found[dataset.items[items, 1]]])
        self.items = np.concatenate(rows) if rows else np.zeros(0, np.int64)  # indices into dataset.items
        if not len(self.items):
            raise ValueError(f"no frame of {dataset.root} can be a real source: phases 'real' and 'paired' need "
                             f"clips with a face3d stage of {backend!r}" + (" and an inversion stage" if need_inversion
                                                                              else "") +
                             f" (run encode-dataset with face3d={backend}); {'; '.join(problems[:3])}")
        clips = dataset.items[self.items, 0]
        self.by_clip = {int(c): self.items[clips == c] for c in np.unique(clips)}

    def __len__(self) -> int:
        return len(self.items)

    def draw(self, count: int) -> np.ndarray:
        """`count` random frames (indices into dataset.items), from torch's global generator."""
        return self.items[torch.randint(len(self.items), (count,)).numpy()]

    def partners(self, items: np.ndarray) -> np.ndarray:
        """A random frame of the same clip for each frame (the paired phase's targets)."""
        out = []
        for item in items:
            same = self.by_clip[int(self.dataset.items[item, 0])]
            out.append(same[int(torch.randint(len(same), (1,)))])
        return np.asarray(out)

    def read(self, items: np.ndarray, device: torch.device, wplus: bool) -> dict[str, torch.Tensor]:
        """Crops in [-1, 1], stored parameters [B, columns] and (optionally) stored W+ of frames."""
        clip_frame = self.dataset.items[items]
        crops = to_model_range(torch.stack(self.dataset.__getitems__([int(i) for i in items])), device)
        params = to_device(torch.from_numpy(np.stack([self.params[int(c)][int(f)] for c, f in clip_frame])), device)
        out = {"crops": crops, "params": params}
        if wplus:
            codes = np.stack([np.asarray(self.wplus[int(c)][int(f)], np.float32) for c, f in clip_frame])
            out["wplus"] = to_device(torch.from_numpy(codes), device)
        return out


# ------------------------------------------------------------------------------------------------------- stage

@dataclass
class Pairs:
    """One step's batch: source W+ and the reenactment's Δp, the truth in shift units, and reference images."""

    source_wplus: torch.Tensor  # [B, L, D], untruncated
    delta: torch.Tensor  # [B, 15] shift units
    truth: torch.Tensor  # [B, 15] shift units
    truth_shape: torch.Tensor  # [B, S] the truth's identity: the source's (the target's when paired), as official
    reference: torch.Tensor  # [B, 3, S, S] the identity / LPIPS reference
    target_image: torch.Tensor | None = None  # the real target frame (paired phase)


def store_crop_size(config: DirectionsTrainingConfig) -> int:
    """The store's crop size: the loop reads crops at it (no resize); the stage resizes them to G's size."""
    store = ClipStore.open(config.store, create=False)
    keys = [ClipKey.parse(text) for text in config.clips] if config.clips else store.clips()
    if not keys:
        raise ValueError(f"the store {store.root} has no clips (run preprocess-dataset first)")
    return int(store.clip(keys[0]).crops.shape[1])


class DirectionsStage(Stage):
    """A, its optimiser, the frozen G and Net3D, the ranges table, the phases' batches and one step."""

    name = "directions"

    def __init__(self, config: DirectionsTrainingConfig, group: Distributed, dataset: StoreCrops):
        self.config, self.group, self.device = config, group, group.device
        self.generator = frozen_generator(config, self.device)
        if config.num_layers_shift > self.generator.n_latent:
            raise ValueError(f"num_layers_shift={config.num_layers_shift} but G has {self.generator.n_latent} W+ layers")
        self.net3d = build_net3d(config, self.device)
        self.arguments = {"shift_dim": self.generator.style_dim, "input_dim": NUM_PARAMS, "w_plus": True,
                          "num_layers": config.num_layers_shift, "bias": True}
        self.A = DirectionMatrix(**self.arguments).to(self.device)
        self.A_train = wrap(self.A, group)
        self.A_optim = adam(self.A.parameters(), self.device, lr=config.lr, weight_decay=config.weight_decay)
        self.amp = Amp(config.precision, self.device)
        self.scaler = self.amp.scaler()
        self.ranges = self._ranges()
        # the Reenactor of inference: its Δp, and its mean w (same samples, same seed) for the truncation
        self.reenactor = Reenactor(self.generator, self.A, self.ranges, config.shift_scale, config.truncation,
                                   config.mean_latent_samples)
        self.frames = StoreFrames(dataset, self.net3d.name, config.real_source == "inversion",
                                  NUM_PARAMS + self.net3d.shape_size) if config.phases_run() - {"synthetic"} else None
        self.encoder = self._encoder() if config.real_source == "encoder" and self.frames is not None else None
        self.weights = self._loss_weights()
        self.identity = identity_distance(config, self.device) if self.weights["identity"] else None
        self.perceptual = perceptual_distance(config, self.device) if self.weights["lpips"] else None
        self.validation = self._validation_pairs()

    # --- setup

    def _ranges(self) -> ParamRanges:
        config = self.config
        if config.ranges == "official":
            return ParamRanges.load(RANGES_PATH)
        if config.ranges == "measure":
            return self.measure_ranges()
        path = Path(config.store) / f"ranges-{config.face3d}.npy" if config.ranges == "store" else Path(config.ranges)
        if not path.is_file():
            raise FileNotFoundError(f"no ranges table at {path}: run encode-dataset with face3d={config.face3d} "
                                    f"(it writes ranges-{config.face3d}.npy), or set ranges=measure")
        return ParamRanges.load(path)

    @torch.no_grad()
    def measure_ranges(self) -> ParamRanges:
        """The official `extract_statistics`: min and max of the Net3D's readings of G's (truncated) samples."""
        generator = torch.Generator(self.device).manual_seed(self.config.seed + 1)
        mean = self.generator.mean_latent(self.config.mean_latent_samples,
                                          generator=torch.Generator(self.device).manual_seed(0)).unsqueeze(1)
        readings = []
        for start in range(0, self.config.ranges_samples, 32):
            count = min(32, self.config.ranges_samples - start)
            wplus = self._sample_wplus(count, generator)
            readings.append(self._read_params(self._render(wplus, mean=mean)).cpu())
        return ParamRanges.measure(torch.cat(readings).double().numpy())

    def _encoder(self) -> Encoder4Editing:
        source = read_weights(self.config.encoder, "e", self.config.weights_dir)
        if not source.config:
            raise ValueError(f"{source.path} does not record the encoder's constructor arguments")
        encoder = Encoder4Editing(**source.config)
        load_into(encoder, source.state, f"{source.path} ['e']")
        encoder = encoder.to(self.device).eval()
        requires_grad(encoder, False)
        return encoder

    def _loss_weights(self) -> dict[str, float]:
        config = self.config
        weights = {"shape": config.shape_weight, "mouth": config.mouth_weight, "eye": config.eye_weight,
                   "identity": config.identity_weight, "lpips": config.lpips_weight, "pixel": config.pixel_weight}
        if weights["identity"]:
            try:
                WeightsRegistry(config.weights_dir).path("arcface-ir-se50")
            except MissingWeightsError:
                if self.group.main:
                    print(f"note: identity_weight={config.identity_weight} but ArcFace (model_ir_se50.pth, registry "
                          f"'arcface-ir-se50') is not in the weights directory: the identity loss is off "
                          f"(weight 0); the dlib embedder is not differentiable", flush=True)
                weights["identity"] = 0.0
        return weights

    @torch.no_grad()
    def _validation_pairs(self) -> dict[str, torch.Tensor]:
        """Fixed synthetic pairs (own generator: the training streams are untouched) and their truth."""
        generator = torch.Generator(self.device).manual_seed(self.config.seed + 2)
        source = self._sample_wplus(self.config.validation_count, generator)
        target = self._sample_wplus(self.config.validation_count, generator)
        source_images, target_images = self._render(source), self._render(target)
        source_params, target_params = self._read_params(source_images), self._read_params(target_images)
        return {"source_wplus": source, "source": source_images, "target": target_images,
                "delta": self._to_shift(target_params) - self._to_shift(source_params),
                "truth": self._to_shift(target_params)}

    # --- pieces of a step

    def _sample_wplus(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """W+ of z ~ N(0, I) through G's mapping, one w on every layer (untruncated: truncation is at render)."""
        z = torch.randn(count, self.generator.style_dim, device=self.device, generator=generator)
        return self.generator.get_latent(z).unsqueeze(1).repeat(1, self.generator.n_latent, 1)

    def _render(self, wplus: torch.Tensor, shift: torch.Tensor | None = None,
                mean: torch.Tensor | None = None) -> torch.Tensor:
        """G(trunc(W+ + shift)) with G's stored noise, as the Reenactor renders."""
        if shift is not None:
            wplus = shift_wplus(wplus, shift)
        if self.config.truncation < 1:
            mean = self.reenactor.mean_w if mean is None else mean
            wplus = mean + self.config.truncation * (wplus - mean)
        return self.generator.synthesis(wplus).image

    def _read_params(self, images: torch.Tensor) -> torch.Tensor:
        return split_reading(self.net3d.read(images))[0]

    def _to_shift(self, params: torch.Tensor) -> torch.Tensor:  # the Reenactor's map: device tensors, no copy
        return self.reenactor.shift_map.to_shift(params)

    def _from_shift(self, coords: torch.Tensor) -> torch.Tensor:
        return self.reenactor.shift_map.from_shift(coords)

    @torch.no_grad()
    def _pairs(self, phase: Phase) -> Pairs:
        """The batch of one step of `phase`; every draw comes from torch's global generator."""
        batch, size = self.config.batch_size, self.generator.size
        if phase == "paired":
            items = self.frames.draw(batch)
            source = self.frames.read(items, self.device, self.encoder is None)
            target = self.frames.read(self.frames.partners(items), self.device, False)
            target_image = resize_to(target["crops"], size)
            target_params, target_shape = split_reading(target["params"])
            truth = self._to_shift(target_params)
            delta = truth - self._to_shift(split_reading(source["params"])[0])
            return Pairs(self._real_wplus(source), delta, truth, target_shape, target_image, target_image)
        target_wplus = self._sample_wplus(batch)
        target_shift = self._to_shift(self._read_params(self._render(target_wplus)))
        if phase == "synthetic":
            source_wplus = self._sample_wplus(batch)
            reference = self._render(source_wplus)
            source_params, source_shape = split_reading(self.net3d.read(reference))
        else:
            source = self.frames.read(self.frames.draw(batch), self.device, self.encoder is None)
            source_wplus, reference = self._real_wplus(source), resize_to(source["crops"], size)
            source_params, source_shape = split_reading(source["params"])
        source_shift = self._to_shift(source_params)
        delta, truth = target_shift - source_shift, target_shift.clone()
        single = int(round(batch * self.config.one_direction_fraction))
        if single:
            delta[batch - single:], truth[batch - single:] = one_direction_shift(
                source_shift[batch - single:], single, self.config.shift_scale)
        return Pairs(source_wplus, delta, truth, source_shape, reference)

    def _real_wplus(self, frames: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.encoder is None:
            return frames["wplus"]
        return self.encoder(resize_to(frames["crops"], self.encoder.input_size))

    def losses(self, pairs: Pairs, directions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and each term of a batch, reenacting through `directions` (A or its DDP wrapper)."""
        with self.amp.autocast():
            reenacted = self._render(pairs.source_wplus, directions(pairs.delta)).float()
        terms = {
            **face_terms(self.net3d, reenacted, pairs.truth, pairs.truth_shape, self.reenactor.shift_map),
            "pixel": (reenacted - pairs.target_image).abs().mean() if pairs.target_image is not None
            else reenacted.new_zeros(()),
        }
        if self.identity is not None:
            terms["identity"] = self.identity(reenacted, pairs.reference).mean()
        if self.perceptual is not None:
            terms["lpips"] = self.perceptual(reenacted, pairs.reference).mean()
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, terms

    # --- the Stage interface

    def train_step(self, step: int, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step of the phase `step` falls in; the loop's crop batch is not used (each phase draws its own)."""
        phase = self.config.phase_at(step)
        total, terms = self.losses(self._pairs(phase), self.A_train)
        optimise(total, self.A_optim, self.scaler, self.A)
        return {"loss": total.detach(), **{name: value.detach() for name, value in terms.items()},
                "phase": torch.full((), float(PHASES.index(phase)), device=self.device)}

    @torch.no_grad()
    def validation_error(self) -> float:
        """Mean |Net3D(reenacted) - target| in shift units over the fixed synthetic pairs (full reenactment)."""
        pairs = self.validation
        reenacted = self._render(pairs["source_wplus"], self.A(pairs["delta"]))
        return float((self._to_shift(self._read_params(reenacted)) - pairs["truth"]).abs().mean())

    def scalars(self) -> dict[str, float]:
        return {"val/param_l1": self.validation_error()}

    @torch.no_grad()
    def samples(self) -> dict[str, tuple[torch.Tensor, int]]:
        count = min(self.config.sample_count, self.config.validation_count)
        pairs = self.validation
        reenacted = self._render(pairs["source_wplus"][:count], self.A(pairs["delta"][:count]))
        return {"reenactment": (torch.cat([pairs["source"][:count], pairs["target"][:count], reenacted]), count)}

    def networks(self):
        return {"A_matrix": self.A}

    def optimisers(self):
        return {"A_optim": self.A_optim}

    def scalers(self):
        return {"A": self.scaler}

    def constructor_configs(self):
        return {"A_matrix": self.arguments}

    def entries(self) -> dict[str, Any]:
        """The official A_matrix.pt entries besides the state dict, and the ranges table A's units are defined by."""
        official = {key: value for key, value in to_checkpoint(self.A, self.config.shift_scale).items()
                    if key != "A_matrix"}
        return {**official, "face3d": self.net3d.name, "ranges": self.ranges.table.tolist()}

    def extra_state(self):
        return {**self.entries(), "ranges": torch.as_tensor(self.ranges.table), "generator": self.config.generator}

    def load_extra_state(self, checkpoint) -> None:
        """A resumed run keeps the table its A was trained in (a re-measured or edited one would move its units)."""
        self.ranges = ParamRanges(checkpoint["ranges"].double().numpy())
        self.reenactor.ranges = self.ranges
        self.validation = self._validation_pairs()

    def export(self) -> Export:
        return Export(self.A, "models.directions:DirectionMatrix", self.arguments, "A_matrix",
                      entries=json_entries(self.entries()))


# ------------------------------------------------------------------------------------------------ entry points

def json_entries(entries: dict[str, Any]) -> dict[str, Any]:
    """A's entries as safetensors metadata holds them: JSON, the ranges table's unmeasured rows (NaN) as null."""
    table = np.asarray(entries["ranges"], np.float64)
    return {**entries, "ranges": [[None if math.isnan(v) else v for v in row] for row in table.tolist()]}


def train_directions(config: DirectionsTrainingConfig, stop_after: int | None = None) -> TrainingSummary:
    """Train (or resume) A of `config`; see `training.common.loop.train`."""
    return train(DirectionsStage, config, store_crop_size, stop_after)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.directions [--config FILE] [key=value ...]` (also what torchrun runs on every rank)."""
    path, overrides = command_line(argv if argv is not None else sys.argv[1:], __doc__)
    train_directions(load_config(DirectionsTrainingConfig, path, overrides))


if __name__ == "__main__":
    main()
