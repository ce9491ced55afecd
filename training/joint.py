"""train-joint: the encoder E and the direction matrix A trained together, with G and the Net3D frozen (the IJCV
paper's joint stage), so that a real source reenacts well without tuning anything per source.

It starts from a trained E (train-encoder's, e4e's) and A (train-directions', A_matrix.pt) and trains on pairs of
frames of an encoded store: a source s and a target t, mostly two frames of one clip, and a share
(`cross_fraction`) of pairs whose target is another identity. With p the store's face3d readings of the Net3D A was
trained with, Δp = p_t - p_s in A's shift units and R = G(trunc(.)):

    inversion      w_s, w_t = E(s), E(t)
                   inversion_l2 * mean (R(w) - x)^2 + inversion_lpips * LPIPS + inversion_identity * ArcFace
                   + delta * e4e's W+ delta regularisation                                    (x = s and t)
    reenactment    w_r = w_s + A(Δp),  r = R(w_r)
                   pixel * mean |r - t| + lpips * LPIPS(r, t)                        (pairs of one clip only)
                   + identity * ArcFace(r, s) + shape, mouth, eye: train-directions' Net3D terms against p_t
    cycle          cycle_code * mean |E(r) - w_r|                        E of the reenacted face gives its code
                   cycle_pixel * mean |R(E(r) + A(p_s - p_t)) - s| + cycle_lpips * LPIPS    and drives back to s

The cycle goes back from E(r), the code of the reenacted image, as the paper's cycle does: from w_r itself it
would be degenerate, since A is linear (w_r + A(-Δp) = w_s + 2 * A's bias, whatever Δp). Cross-identity pairs
have no pixel target, so they can only be met by moving pose and expression: they keep A free of identity.
Every term has a weight; 0 switches it off, and a pass whose terms are all off is not computed.

`joint=false` trains the same terms with no gradient crossing between the networks: E learns from the inversion
and cycle-code terms only, A from the reenactment and cycle-pixel terms only (E's codes enter them detached). It is
the separately trained baseline at equal cost, for the ablation in the README.

Loss weights: the IJCV paper's values for this stage could not be read from any source reachable here, so the
defaults are the official trainer's for the reenactment terms (identity 10, LPIPS 10, shape, mouth, eye and pixel
1), e4e's for the inversion terms (L2 1, LPIPS 0.8, identity 0.1, delta 2e-4) and 1 for the cycle (its LPIPS 10,
as the reenactment's). LPIPS needs AlexNet's ImageNet file and identity ArcFace's (`model_ir_se50.pth`); without
them those terms are off and the run says so once.

Checkpoints hold E under 'e' (e4e's layout) and A's official A_matrix.pt entries, plus both optimisers and the
loop's resume state, so a checkpoint reads as e4e-voxceleb.pt and as A_matrix.pt. The run's exports: the stage's
own `<out>/joint.safetensors` (E), `<out>/directions.safetensors` (A, with `shift_scale` and its ranges table, as
train-directions exports it), and the final E and A alone in the official layouts, `<out>/e4e.pt` and
`<out>/A_matrix.pt`. `flows.train_joint` installs E and A as the registry's `demo-joint` set when asked.

    python -m training.joint --config training/configs/demo-joint.yaml out=runs/joint
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from models import MissingWeightsError
from models.directions import (NUM_PARAMS, SHIFT_SCALE, DirectionMatrix, ParamRanges, from_checkpoint,
                               shift_wplus, to_checkpoint)
from models.e4e import Encoder4Editing
from models.images import resize_to
from models.reenact import Reenactor
from storage.files import atomic_path
from storage.weights import WeightsRegistry
from training.common.checkpoints import Export, load_into, read_checkpoint, read_weights, save_export
from training.common.config import DTYPES, TrainingConfig, command_line, load_config
from training.common.distributed import Distributed, wrap
from training.common.loop import Amp, Stage, TrainingSummary, optimise, requires_grad, train
from training.data import StoreCrops
from training.directions import StoreFrames, build_net3d, face_terms, json_entries, split_reading, store_crop_size
from training.encoder import delta_regularisation, frozen_generator, identity_distance, perceptual_distance

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # two image batches in [-1, 1] -> [B]
LPIPS_TERMS = ("inversion_lpips", "lpips", "cycle_lpips")
IDENTITY_TERMS = ("inversion_identity", "identity")
CYCLE_TERMS = ("cycle_code", "cycle_pixel", "cycle_lpips")
OFFICIAL_A_KEYS = ("learned_directions", "shift_scale", "w_plus", "num_layers_shift", "shift_dim")


class JointTrainingConfig(TrainingConfig):
    """train-joint's settings; the loss weights are the official trainer's and e4e's (see the module docstring)."""

    out: str = Field("outputs/train-joint", description="Run directory (checkpoints, logs, samples, the exports).")
    steps: int = Field(20_000, ge=1, description="Optimiser steps.")
    batch_size: int = Field(8, ge=2, description="Pairs (source, target) per step and process.")
    generator: str = Field("demo-generator", description="The frozen G: a weights-registry name, or a .safetensors / official .pt file ('g_ema').")
    encoder: str = Field("demo-encoder", description="The E to start from: a registry name, or a .safetensors / official .pt file ('e').")
    directions: str = Field("demo-directions", description="The A to start from: a registry name or train-directions' .safetensors (with its ranges table; the official A_matrix.pt uses the official table).")
    weights_dir: str | None = Field(None, description="Weights directory for registry names (G, E, A, ArcFace, LPIPS's AlexNet, DECA).")
    face3d: Literal["synth-regressor", "deca"] = Field("synth-regressor", description="The differentiable Net3D of the reenactment terms, the one A was trained with; the store's face3d stage (p) must be of this backend.")
    face3d_weights: str | None = Field(None, description="face3d=synth-regressor: the regressor's weights file (default: the one shipped in models/data).")
    synth_shape: Literal["params", "landmarks"] = Field("params", description="face3d=synth-regressor: the shape term's form, as train-directions' synth_shape (params: the 15 parameters in shift units; landmarks: the posed head's 3D landmarks).")
    truncation: float = Field(0.7, gt=0, le=1, description="Truncation of every rendered code towards G's mean w, as the set's inference renders (official: 0.7; demo: 1).")
    mean_latent_samples: int = Field(4096, ge=1, description="z samples of G's mean w (as the Reenactor computes it, seed 0).")
    joint: bool = Field(True, description="E learns from the reenactment and cycle terms too; false: no gradient crosses between E and A (E: inversion and cycle-code terms; A: reenactment and cycle-pixel terms), the separately trained baseline.")
    cross_fraction: float = Field(0.25, ge=0, lt=1, description="Share of each batch whose target is a frame of another identity (no pixel target; keeps A free of identity).")
    encoder_lr: float = Field(1e-4, gt=0, description="Adam learning rate of E (e4e: 1e-4).")
    directions_lr: float = Field(1e-4, gt=0, description="Adam learning rate of A (official: 1e-4).")
    weight_decay: float = Field(5e-4, ge=0, description="Adam weight decay of A (official: 5e-4).")
    inversion_l2_weight: float = Field(1.0, ge=0, description="E(s), E(t) through G against s, t: pixel L2 (e4e: 1).")
    inversion_lpips_weight: float = Field(0.8, ge=0, description="... LPIPS (e4e: 0.8); needs AlexNet's ImageNet weights.")
    inversion_identity_weight: float = Field(0.1, ge=0, description="... ArcFace identity (e4e: 0.1); needs model_ir_se50.pth.")
    delta_weight: float = Field(2e-4, ge=0, description="e4e's W+ delta regularisation of E's codes (e4e: 2e-4).")
    pixel_weight: float = Field(1.0, ge=0, description="Reenacted s against the target frame t (pairs of one clip): pixel L1 (official paired phase: 1).")
    lpips_weight: float = Field(10.0, ge=0, description="... LPIPS (official: 10); needs AlexNet's ImageNet weights.")
    identity_weight: float = Field(10.0, ge=0, description="Reenacted s against s: ArcFace identity (official: 10); needs model_ir_se50.pth.")
    shape_weight: float = Field(1.0, ge=0, description="The Net3D's 3DMM shape term against p_t, as train-directions (official: 1).")
    mouth_weight: float = Field(1.0, ge=0, description="Mouth landmark distances against p_t (official: 1).")
    eye_weight: float = Field(1.0, ge=0, description="Eye landmark distances against p_t (official: 1).")
    cycle_code_weight: float = Field(1.0, ge=0, description="Cycle: mean |E(reenacted image) - reenacted code|; 0 switches it off.")
    cycle_pixel_weight: float = Field(1.0, ge=0, description="Cycle: E(reenacted image) driven back by A(p_s - p_t) renders s, pixel L1; 0 switches it off.")
    cycle_lpips_weight: float = Field(10.0, ge=0, description="... its LPIPS; needs AlexNet's ImageNet weights; 0 switches it off.")
    lpips_random_backbone: bool = Field(False, description="Run the LPIPS terms with a random AlexNet trunk (tests and timing; not LPIPS).")
    validation_count: int = Field(8, ge=1, description="Fixed pairs of one clip whose inversion, reenactment and cycle errors are logged (val/*).")
    sample_count: int = Field(4, ge=1, description="Pairs in the logged grid (source, target, inversion, reenacted, driven back).")
    install_dir: str | None = Field(None, description="After the run, copy E and A into this weights directory as the 'demo-joint' set (demo-joint/encoder.safetensors, demo-joint/directions.safetensors), for --weights demo-joint --weights-dir DIR; needs generator=demo-generator.")

    @model_validator(mode="after")
    def _installable(self) -> JointTrainingConfig:
        if self.install_dir and self.generator != "demo-generator":
            raise ValueError(f"install_dir installs the 'demo-joint' set, whose G is demo-generator; this run trains "
                             f"for generator={self.generator}: use its exports (joint.safetensors, "
                             f"directions.safetensors) by file instead")
        return self

    def loss_weights(self) -> dict[str, float]:
        return {"inversion_l2": self.inversion_l2_weight, "inversion_lpips": self.inversion_lpips_weight,
                "inversion_identity": self.inversion_identity_weight, "delta": self.delta_weight,
                "pixel": self.pixel_weight, "lpips": self.lpips_weight, "identity": self.identity_weight,
                "shape": self.shape_weight, "mouth": self.mouth_weight, "eye": self.eye_weight,
                "cycle_code": self.cycle_code_weight, "cycle_pixel": self.cycle_pixel_weight,
                "cycle_lpips": self.cycle_lpips_weight}


# ------------------------------------------------------------------------------------------------------ the cycle

def cycle_terms(encode: Callable[[torch.Tensor], torch.Tensor], render: Callable[[torch.Tensor], torch.Tensor],
                reenacted_code: torch.Tensor, reenacted: torch.Tensor, back_shift: torch.Tensor,
                source: torch.Tensor, perceptual: Distance | None = None, joint: bool = True
                ) -> dict[str, torch.Tensor]:
    """The cycle of one reenactment: E of the reenacted image against the code that rendered it (cycle_code), and
    E's code driven back by `back_shift` = A(p_s - p_t), rendered, against the source image (cycle_pixel, and
    cycle_lpips with `perceptual`). Zero for an E that inverts G's images exactly and A = 0.

    joint=False: no gradient crosses between the networks: E's term sees the reenactment detached, and the drive
    back starts from E's code detached, so that A learns from it through `back_shift` alone."""
    code = encode(reenacted if joint else reenacted.detach())
    back = render(shift_wplus(code if joint else code.detach(), back_shift))
    target = reenacted_code if joint else reenacted_code.detach()
    terms = {"cycle_code": (code - target).abs().mean(), "cycle_pixel": (back - source).abs().mean()}
    if perceptual is not None:
        terms["cycle_lpips"] = perceptual(back, source).mean()
    return terms


# ------------------------------------------------------------------------------------------------------- the stage

@dataclass
class JointPairs:
    """One step's pairs: the crops (what E reads), the frames at G's size, Δp and the truth in shift units."""

    source_crops: torch.Tensor  # [B, 3, S, S] in [-1, 1]
    target_crops: torch.Tensor
    source: torch.Tensor  # [B, 3, size, size]: G's size
    target: torch.Tensor
    delta: torch.Tensor  # [B, 15] p_t - p_s
    truth: torch.Tensor  # [B, 15] p_t
    truth_shape: torch.Tensor  # [B, N] the truth's identity: the target's in a clip, the source's across identities
    same: torch.Tensor  # [B] bool: the target shows the source's identity (a pixel target)


class JointStage(Stage):
    """E and A with their optimisers, the frozen G and Net3D, A's ranges table, the pairs and one step."""

    name = "joint"  # the loop's export, <out>/joint.safetensors, is E; A goes to <out>/directions.safetensors

    def __init__(self, config: JointTrainingConfig, group: Distributed, dataset: StoreCrops):
        self.config, self.group, self.device = config, group, group.device
        self.generator = frozen_generator(config, self.device)
        self.e, self.e_arguments = self._encoder()
        self.A, entries = WeightsRegistry(config.weights_dir).load_spec(config.directions, self.device)
        if not isinstance(self.A, DirectionMatrix):
            raise ValueError(f"{config.directions} is not a direction matrix")
        requires_grad(self.A, True)
        self.A.train()
        self.shift_scale = float(entries.get("shift_scale", SHIFT_SCALE))
        self.ranges = ParamRanges.of_directions(entries)
        self.reenactor = Reenactor(self.generator, self.A, self.ranges, self.shift_scale, config.truncation,
                                   config.mean_latent_samples)  # inference's Δp and truncation
        self.net3d = build_net3d(config, self.device)
        self.e_train, self.A_train = wrap(self.e, group), wrap(self.A, group)
        self.e_optim = torch.optim.Adam(self.e.parameters(), lr=config.encoder_lr)
        self.A_optim = torch.optim.Adam(self.A.parameters(), lr=config.directions_lr,
                                        weight_decay=config.weight_decay)
        self.amp = Amp(config.precision, self.device)
        self.scaler = self.amp.scaler()  # one loss: one scaler steps both optimisers
        self.frames = StoreFrames(dataset, self.net3d.name, False, NUM_PARAMS + self.net3d.shape_size)
        # the identity of every frame StoreFrames draws, by its index into dataset.items
        self.identities = np.asarray([dataset.keys[clip].identity for clip in dataset.items[self.frames.items, 0]])
        self.identity_of = dict(zip(self.frames.items.tolist(), self.identities))
        if config.cross_fraction and len(set(self.identities)) < 2:
            raise ValueError(f"cross_fraction={config.cross_fraction} needs frames of two identities at least; "
                             f"{dataset.root} has one: set cross_fraction=0")
        self.weights = config.loss_weights()
        self.perceptual = self._optional(LPIPS_TERMS, perceptual_distance, "lpips_weight",
                                         "LPIPS's AlexNet (alexnet-owt-7be5be79.pth)")
        self.identity = self._optional(IDENTITY_TERMS, identity_distance, "identity_weight",
                                       "ArcFace (model_ir_se50.pth, registry 'arcface-ir-se50')")
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(config.seed + 2)  # fixed validation pairs, the training stream untouched
            self.validation = self._pairs(config.validation_count, cross=0)

    # --- setup

    def _encoder(self) -> tuple[Encoder4Editing, dict[str, Any]]:
        source = read_weights(self.config.encoder, "e", self.config.weights_dir)
        if not source.config:
            raise ValueError(f"{source.path} does not record the encoder's constructor arguments")
        encoder = Encoder4Editing(**source.config)
        load_into(encoder, source.state, f"{source.path} ['e']")
        if (encoder.style_count, encoder.style_dim) != (self.generator.n_latent, self.generator.style_dim):
            raise ValueError(f"{source.path} encodes {encoder.style_count} x {encoder.style_dim} W+ codes; G takes "
                             f"{self.generator.n_latent} x {self.generator.style_dim}")
        return encoder.to(self.device).train(), dict(source.config)

    def _optional(self, terms: tuple[str, ...], build: Callable, weight_field: str, what: str):
        """The distance of `terms` (LPIPS or identity), or None with their weights set to 0 when all are off or its
        network's file is absent (said once)."""
        if not any(self.weights[term] for term in terms):
            return None
        try:  # the builders read only whether their term is on, and where the weights are
            return build(self.config.model_copy(update={weight_field: 1.0}), self.device)
        except MissingWeightsError:
            if self.group.main:
                print(f"note: {what} is not in the weights directory: {', '.join(terms)} off (weight 0)", flush=True)
            self.weights.update(dict.fromkeys(terms, 0.0))
            return None

    # --- pieces of a step

    @torch.no_grad()
    def _pairs(self, count: int, cross: int) -> JointPairs:
        """`count` pairs, the last `cross` of them across identities; every draw from torch's global generator."""
        items = self.frames.draw(count)
        partners = self.frames.partners(items)
        if cross:
            partners[count - cross:] = self._other_identity(items[count - cross:])
        source = self.frames.read(items, self.device, wplus=False)
        target = self.frames.read(partners, self.device, wplus=False)
        source_params, source_shape = split_reading(source["params"])
        target_params, target_shape = split_reading(target["params"])
        same = torch.arange(count, device=self.device) < count - cross
        size = self.generator.size
        return JointPairs(source["crops"], target["crops"], resize_to(source["crops"], size),
                          resize_to(target["crops"], size), self.reenactor.delta_p(source_params, target_params),
                          self._to_shift(target_params), torch.where(same[:, None], target_shape, source_shape), same)

    def _other_identity(self, items: np.ndarray) -> np.ndarray:
        """A random frame of another identity for each frame (indices into dataset.items, as `StoreFrames`)."""
        out = []
        for item in items:
            own = self.identity_of[int(item)]
            while True:
                other = int(torch.randint(len(self.frames.items), (1,)))
                if self.identities[other] != own:
                    out.append(self.frames.items[other])
                    break
        return np.asarray(out)

    def _to_shift(self, params: torch.Tensor) -> torch.Tensor:
        return self.reenactor.shift_map.to_shift(params)

    def render(self, wplus: torch.Tensor) -> torch.Tensor:
        """G(trunc(W+)) with G's stored noise, as the Reenactor renders."""
        return self.generator.synthesis(self.reenactor.truncate(wplus)).image

    def losses(self, pairs: JointPairs, encoder: nn.Module, directions: nn.Module
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and each term, through `encoder` and `directions` (the networks or their DDP
        wrappers; each is called once, on the whole batch, as DDP requires)."""
        weights, joint, count = self.weights, self.config.joint, len(pairs.delta)
        images = torch.cat([pairs.source, pairs.target])
        with self.amp.autocast():
            codes = encoder(torch.cat([pairs.source_crops, pairs.target_crops])).float()
            shifts = directions(torch.cat([pairs.delta, -pairs.delta])).float()
            forward, backward = shifts[:count], shifts[count:]
            terms: dict[str, torch.Tensor] = {"delta": delta_regularisation(codes, self.e.style_count - 1)}
            if any(weights[name] for name in ("inversion_l2", "inversion_lpips", "inversion_identity")):
                inverted = self.render(codes).float()
                terms["inversion_l2"] = (inverted - images).pow(2).mean()
                if self.perceptual is not None and weights["inversion_lpips"]:
                    terms["inversion_lpips"] = self.perceptual(inverted, images).mean()
                if self.identity is not None and weights["inversion_identity"]:
                    terms["inversion_identity"] = self.identity(inverted, images).mean()
            source_code = codes[:count] if joint else codes[:count].detach()
            reenacted_code = shift_wplus(source_code, forward)
            reenacted = self.render(reenacted_code).float()
            terms.update(self._reenactment_terms(reenacted, pairs))
            if any(weights[name] for name in CYCLE_TERMS):  # E's second pass: the module itself (DDP: one call)
                terms.update(cycle_terms(self.encode_generated, self.render, reenacted_code, reenacted, backward,
                                         pairs.source, self.perceptual if weights["cycle_lpips"] else None, joint))
        total = sum(weights[name] * value for name, value in terms.items())
        return total, terms

    def encode_generated(self, images: torch.Tensor) -> torch.Tensor:
        """E of G's images with its running statistics, as inference encodes (gradients flow as ever): the
        reenacted faces must not move the statistics E normalises real crops with."""
        training = self.e.training
        self.e.eval()
        try:
            return self.e(images)
        finally:
            self.e.train(training)

    def _reenactment_terms(self, reenacted: torch.Tensor, pairs: JointPairs) -> dict[str, torch.Tensor]:
        """Pixel and LPIPS against the target (pairs of one clip), identity against the source, the Net3D terms
        against p_t (every pair)."""
        same = pairs.same
        terms = face_terms(self.net3d, reenacted, pairs.truth, pairs.truth_shape, self.reenactor.shift_map)
        terms["pixel"] = (reenacted[same] - pairs.target[same]).abs().mean() if same.any() \
            else reenacted.new_zeros(())
        if self.perceptual is not None and self.weights["lpips"] and same.any():
            terms["lpips"] = self.perceptual(reenacted[same], pairs.target[same]).mean()
        if self.identity is not None and self.weights["identity"]:
            terms["identity"] = self.identity(reenacted, pairs.source).mean()
        return terms

    # --- the Stage interface

    def train_step(self, step: int, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step on pairs drawn from the store (the loop's crop batch is not used)."""
        self.e.train()
        pairs = self._pairs(self.config.batch_size, round(self.config.batch_size * self.config.cross_fraction))
        total, terms = self.losses(pairs, self.e_train, self.A_train)
        self.A_optim.zero_grad(set_to_none=True)
        optimise(total, self.e_optim, self.scaler, self.e, also=self.A_optim)
        return {"loss": total.detach(), **{name: value.detach() for name, value in terms.items()}}

    @torch.no_grad()
    def _validation_images(self) -> dict[str, torch.Tensor]:
        """The fixed pairs' inversion, reenactment and cycle renders, E in eval mode (its running statistics)."""
        self.e.eval()
        pairs = self.validation
        code = self.e(pairs.source_crops)
        shifts = self.A(torch.cat([pairs.delta, -pairs.delta]))
        reenacted_code = shift_wplus(code, shifts[:len(code)])
        reenacted = self.render(reenacted_code)
        back = self.render(shift_wplus(self.e(reenacted), shifts[len(code):]))
        return {"inversion": self.render(code), "reenacted": reenacted, "back": back}

    @torch.no_grad()
    def scalars(self) -> dict[str, float]:
        pairs, images = self.validation, self._validation_images()
        reading = self._to_shift(split_reading(self.net3d.read(images["reenacted"]))[0])
        return {"val/inversion_l1": float((images["inversion"] - pairs.source).abs().mean()),
                "val/reenact_l1": float((images["reenacted"] - pairs.target).abs().mean()),
                "val/cycle_l1": float((images["back"] - pairs.source).abs().mean()),
                "val/param_l1": float((reading - pairs.truth).abs().mean())}

    @torch.no_grad()
    def samples(self) -> dict[str, tuple[torch.Tensor, int]]:
        count = min(self.config.sample_count, self.config.validation_count)
        pairs, images = self.validation, self._validation_images()
        grid = [pairs.source, pairs.target, images["inversion"], images["reenacted"], images["back"]]
        return {"joint": (torch.cat([image[:count] for image in grid]), count)}

    def networks(self):
        return {"e": self.e, "A_matrix": self.A}

    def optimisers(self):
        return {"e_optim": self.e_optim, "A_optim": self.A_optim}

    def scalers(self):
        return {"joint": self.scaler}

    def constructor_configs(self):
        return {"e": self.e_arguments, "A_matrix": directions_arguments(self.A)}

    def directions_entries(self) -> dict[str, Any]:
        """The official A_matrix.pt entries besides the state dict, and the table of A's units (as
        train-directions' `entries`)."""
        official = {key: value for key, value in to_checkpoint(self.A, self.shift_scale).items() if key != "A_matrix"}
        return {**official, "face3d": self.net3d.name, "ranges": self.ranges.table.tolist()}

    def extra_state(self):
        return {**self.directions_entries(), "ranges": torch.as_tensor(self.ranges.table),
                "generator": self.config.generator}

    def load_extra_state(self, checkpoint) -> None:
        """A resumed run keeps the table A's units were trained in."""
        self.ranges = ParamRanges(checkpoint["ranges"].double().numpy())
        self.reenactor.ranges = self.ranges

    def export(self) -> Export:
        return Export(self.e, "models.e4e:Encoder4Editing", self.e_arguments, "e",
                      entries={"generator": self.config.generator, "trained_with": "train-joint"})


def directions_arguments(directions: DirectionMatrix) -> dict[str, Any]:
    """Constructor arguments of a direction matrix (what its exported safetensors records)."""
    return {"shift_dim": directions.shift_dim, "input_dim": directions.input_dim, "out_dim": directions.out_dim,
            "w_plus": directions.w_plus, "num_layers": directions.num_layers,
            "bias": directions.linear.bias is not None}


# ------------------------------------------------------------------------------------------------ entry points

@dataclass(frozen=True)
class JointExports:
    """The files a finished run delivers."""

    encoder: Path  # <out>/joint.safetensors (the loop's export)
    directions: Path  # <out>/directions.safetensors
    official_encoder: Path  # <out>/e4e.pt: {'e': state}
    official_directions: Path  # <out>/A_matrix.pt


def exports_of(out: str | Path) -> JointExports:
    root = Path(out)
    return JointExports(root / f"{JointStage.name}.safetensors", root / "directions.safetensors", root / "e4e.pt",
                        root / "A_matrix.pt")


def export_networks(checkpoint: Path, config: JointTrainingConfig) -> JointExports:
    """A of a joint checkpoint as train-directions exports it, and E and A alone in their official layouts."""
    state = read_checkpoint(checkpoint)
    directions, shift_scale = from_checkpoint(state)
    entries = {**{key: state[key] for key in OFFICIAL_A_KEYS}, "face3d": state["face3d"],
               "ranges": state["ranges"].double().numpy()}
    exports = exports_of(config.out)
    save_export(Export(directions, "models.directions:DirectionMatrix", directions_arguments(directions), "A_matrix",
                       entries=json_entries(entries)), exports.directions, DTYPES[config.export_dtype],
                {"training": config.model_dump(mode="json"), "step": state["step"]})
    for path, content in ((exports.official_encoder, {"e": state["e"]}),
                          (exports.official_directions, to_checkpoint(directions, shift_scale))):
        with atomic_path(path) as partial:
            torch.save(content, partial)
    return exports


def train_joint(config: JointTrainingConfig, stop_after: int | None = None) -> TrainingSummary:
    """Train (or resume) E and A of `config`; see `training.common.loop.train`. A finished run also writes A's
    safetensors and the official-layout files beside the loop's export (`exports_of`)."""
    summary = train(JointStage, config, store_crop_size, stop_after)
    if summary.steps == config.steps and summary.checkpoint:
        export_networks(Path(summary.checkpoint), config)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.joint [--config FILE] [key=value ...]` (also what torchrun runs on every rank)."""
    path, overrides = command_line(argv if argv is not None else sys.argv[1:], __doc__)
    train_joint(load_config(JointTrainingConfig, path, overrides))


if __name__ == "__main__":
    main()
