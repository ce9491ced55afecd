"""train-generator: StyleGAN2 (`models.stylegan2`) trained or fine-tuned on the store's crops.

The losses and schedule of StyleGAN2 as rosinality's train.py runs them (the layout the paper's generator was
converted to):

    D   non-saturating logistic loss softplus(D(fake)) + softplus(-D(real)); lazy R1, gamma/2 |grad D(real)|^2,
        every `d_reg_every` steps, weighted by that interval
    G   softplus(-D(G(z))); lazy path-length regularisation every `g_reg_every` steps on a batch shrunk by
        `path_batch_shrink`, against a running mean of path lengths (decay 0.01)
    style mixing with probability `mixing`; Adam with the lazy-regularisation corrections of lr and betas;
    an exponential moving average of G (half-life `ema_kimg` thousand images) that the run exports as 'g_ema'

Optional ADA-style augmentation (`augment='ada'`) for small datasets: `augment_images` applies to every image D
sees, real and fake, with probability p each: x-flip, translation (up to 1/8 of the image), isotropic
scaling (log-normal, sigma 0.2 ln 2), rotation (uniform, any angle), brightness (+N(0, 0.2)), contrast and
saturation (log-normal, sigma 0.5 ln 2 and ln 2). The geometric ones compose into one bilinear resampling with
reflected borders. p follows ADA's r_t heuristic: every `ada_every` steps, r_t = E[sign(D(real))] over those steps
and all ranks, and p moves by sign(r_t - ada_target) * (images in those steps) / (ada_kimg * 1000), within [0, 1).
Not covered (as in NVlabs' pipeline): 90-degree rotations, anisotropic scaling, hue rotation, luma flip, image-space
filtering, noise and cutout, and the wavelet-filtered upsampling that keeps NVlabs' geometric augments from leaking
at high p; with `augment='fixed'`, p stays at `augment_p`.

Start from scratch, or fine-tune from `init` (a registry name such as 'stylegan2-voxceleb256', or a file: our
safetensors, or a .pt in the official layout, whose 'g', 'd' and 'g_ema' are all used when present).

    python -m training.generator --config gen.yaml store=outputs/synthetic.zarr size=64 steps=5000
    torchrun --nproc_per_node 4 -m training.generator --config gen.yaml
"""

from __future__ import annotations

import copy
import math
import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import autograd

from models.stylegan2 import Discriminator, Generator
from training.common.checkpoints import Export, load_into, read_weights
from training.common.config import TrainingConfig, command_line, load_config
from training.common.distributed import Distributed, wrap
from training.common.loop import (Amp, Stage, TrainingSummary, adam, ema_update, maybe_compile, optimise, requires_grad,
                                  train)
from training.data import StoreCrops


class GeneratorTrainingConfig(TrainingConfig):
    """train-generator's settings. Defaults: rosinality's train.py, at the paper's VoxCeleb architecture."""

    out: str = Field("outputs/train-generator", description="Run directory (checkpoints, logs, samples, the export).")
    steps: int = Field(100_000, ge=1, description="Optimiser steps of D and G.")
    size: int = Field(256, description="Image size of G and D (a power of two, 8..1024); crops are resized to it.")
    style_dim: int = Field(512, ge=1, description="Dimension of z and w.")
    n_mlp: int = Field(8, ge=1, description="Layers of the mapping network.")
    channel_multiplier: int = Field(1, ge=1, description="Width multiplier of the layers above 32 px (paper's G: 1).")
    channel_max: int = Field(512, ge=1, description="At most this many channels in any layer of G and D (512: the official widths; smaller for small demo networks).")
    init: str | None = Field(None, description="Fine-tune from: a weights-registry name, or a .safetensors / official-layout .pt file.")
    weights_dir: str | None = Field(None, description="Weights directory for a registry name in `init`.")
    lr: float = Field(0.002, gt=0, description="Adam learning rate (before the lazy-regularisation correction).")
    r1: float = Field(10.0, ge=0, description="R1 weight gamma.")
    d_reg_every: int = Field(16, ge=1, description="Steps between R1 passes (lazy regularisation).")
    path_regularize: float = Field(2.0, ge=0, description="Path-length regularisation weight.")
    path_batch_shrink: int = Field(2, ge=1, description="Batch divisor of the path-length pass.")
    g_reg_every: int = Field(4, ge=1, description="Steps between path-length passes.")
    mixing: float = Field(0.9, ge=0, le=1, description="Probability of style mixing.")
    ema_kimg: float = Field(10.0, gt=0, description="Half-life of G's moving average, thousands of images.")
    ema_rampup: float | None = Field(None, gt=0, description="NVlabs' ramp-up: half-life at most this fraction of the images seen (short runs from scratch); None: off.")
    xflip: bool = Field(True, description="Mirror half of the real images at random.")
    augment: Literal["off", "ada", "fixed"] = Field("off", description="Augment what D sees: off, ada (adaptive p) or fixed (p = augment_p).")
    augment_p: float = Field(0.0, ge=0, lt=1, description="Augmentation probability: the start (ada) or the value (fixed).")
    ada_target: float = Field(0.6, gt=0, lt=1, description="ADA's target of r_t = E[sign(D(real))].")
    ada_kimg: float = Field(500.0, gt=0, description="Thousands of images for p to move by 1 (ADA's speed).")
    ada_every: int = Field(4, ge=1, description="Steps between updates of p.")
    sample_count: int = Field(16, ge=1, description="Images in the logged grid of G's moving average (fixed z).")
    fast_ops: Literal["off", "folded"] = Field("off", description="G's and D's equivalent fast ops (models.stylegan2 use_fast_ops): the FIR blur folded into the up- and down-sampling convolutions, one epilogue per layer of G; the same maths rounded differently, for bf16/fp16 on a GPU where a depthwise FIR pass is slow. off: the reference ops.")

    def generator_config(self) -> dict[str, Any]:
        """Constructor arguments of `models.stylegan2.Generator` (what the exported safetensors records)."""
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier, "channel_max": self.channel_max}

    def discriminator_config(self) -> dict[str, Any]:
        return {"size": self.size, "channel_multiplier": self.channel_multiplier, "channel_max": self.channel_max}


# ------------------------------------------------------------------------------------------------------ losses

def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_pred).mean()


def r1_penalty(real_pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean squared norm of D's gradient at the real images (graph kept: it is trained through)."""
    (gradient,) = autograd.grad(real_pred.sum(), real, create_graph=True)
    return gradient.pow(2).flatten(1).sum(1).mean()


def path_lengths(images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """|J^T y| per sample for a random image-space direction y (scaled so the length does not grow with the
    resolution), averaged over the W+ layers: what path-length regularisation keeps constant."""
    direction = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (gradient,) = autograd.grad((images * direction).sum(), latents, create_graph=True)
    return gradient.pow(2).sum(2).mean(1).sqrt()


def mixing_noise(batch: int, dim: int, probability: float, device: torch.device) -> list[torch.Tensor]:
    """One z per image, or two (style mixing, G picks the crossover layer) with `probability`."""
    if probability > 0 and random.random() < probability:
        return list(torch.randn(2, batch, dim, device=device).unbind(0))
    return [torch.randn(batch, dim, device=device)]


def ema_decay(config: GeneratorTrainingConfig, images_per_step: int, images_seen: int) -> float:
    """Per-step decay of G's average for a half-life of `ema_kimg` thousand images (ramped up if asked)."""
    half_life = config.ema_kimg * 1000
    if config.ema_rampup is not None:
        half_life = min(half_life, images_seen * config.ema_rampup)
    return 0.5 ** (images_per_step / max(half_life, 1e-8))


# ------------------------------------------------------------------------------------------------ augmentation

def augment_images(images: torch.Tensor, p: float) -> torch.Tensor:
    """ADA-style differentiable augmentation, each transform applied per image with probability p (see the module
    docstring for what it covers). p = 0 returns `images` itself and draws no random numbers."""
    if p <= 0:
        return images
    batch, device = images.shape[0], images.device

    def chosen() -> torch.Tensor:
        return (torch.rand(batch, device=device) < p).float()

    flip = 1 - 2 * chosen() * (torch.rand(batch, device=device) < 0.5).float()
    shift = (torch.rand(batch, 2, device=device) * 2 - 1) * 0.25 * chosen()[:, None]  # 1/8 image = 0.25 in [-1, 1]
    scale = torch.exp2(torch.randn(batch, device=device) * 0.2 * chosen())
    angle = (torch.rand(batch, device=device) * 2 - 1) * math.pi * chosen()
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    brightness = torch.randn(batch, 1, 1, 1, device=device) * 0.2 * chosen()[:, None, None, None]
    contrast = torch.exp2(torch.randn(batch, 1, 1, 1, device=device) * 0.5 * chosen()[:, None, None, None])
    saturation = torch.exp2(torch.randn(batch, 1, 1, 1, device=device) * chosen()[:, None, None, None])
    images = images + brightness.to(images.dtype)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast.to(images.dtype) + mean
    luma = images.mean(dim=1, keepdim=True)
    return (images - luma) * saturation.to(images.dtype) + luma


class AdaptiveP:
    """ADA's p: moved every `every` steps by the sign of r_t - target, at `images/kimg*1000` per update."""

    def __init__(self, config: GeneratorTrainingConfig, images_per_step: int):
        self.mode = config.augment
        self.p = config.augment_p if config.augment != "off" else 0.0
        self.target, self.every = config.ada_target, config.ada_every
        self.adjust = images_per_step * config.ada_every / (config.ada_kimg * 1000)
        self.signs = torch.zeros(2)  # sum of sign(D(real)), count, since the last update (this rank)
        self.r_t = 0.0

    def observe(self, real_pred: torch.Tensor, step: int, group: Distributed) -> None:
        if self.mode != "ada":
            return
        self.signs = self.signs.to(real_pred.device) + torch.stack(
            [torch.sign(real_pred.detach().float()).sum(), torch.full((), real_pred.numel(), dtype=torch.float,
                                                                     device=real_pred.device)])
        if (step + 1) % self.every == 0:
            total = group.mean(self.signs)
            self.r_t = float(total[0] / total[1])
            self.p = min(max(self.p + math.copysign(self.adjust, self.r_t - self.target), 0.0), 1.0 - 1e-6)
            self.signs = torch.zeros_like(self.signs)


# ------------------------------------------------------------------------------------------------------- stage

class GeneratorStage(Stage):
    """G, D and G's moving average, their Adam optimisers, and one StyleGAN2 step."""

    name = "generator"

    def __init__(self, config: GeneratorTrainingConfig, group: Distributed, dataset: StoreCrops):
        self.config, self.group, self.device = config, group, group.device
        self.images_per_step = config.batch_size * group.world_size
        self.g = Generator(**config.generator_config()).to(self.device)
        self.d = Discriminator(**config.discriminator_config()).to(self.device)
        if config.fast_ops != "off":
            self.g.use_fast_ops(fir=config.fast_ops)
            self.d.use_fast_ops()
        self.g_ema = copy.deepcopy(self.g).eval()
        if config.init:
            self._initialise(config.init)
        requires_grad(self.g_ema, False)
        # noise maps are fixed buffers and D has none that change: nothing to broadcast per forward
        # the regularisers' double backward runs uncompiled, through the same DDP wrappers
        self.g_reg_train = wrap(self.g, group, broadcast_buffers=False)
        self.d_reg_train = wrap(self.d, group, broadcast_buffers=False)
        self.g_train = maybe_compile(self.g_reg_train, config.compile, self.device)
        self.d_train = maybe_compile(self.d_reg_train, config.compile, self.device)
        self.g_optim = lazy_adam(self.g.parameters(), config.lr, config.g_reg_every, self.device)
        self.d_optim = lazy_adam(self.d.parameters(), config.lr, config.d_reg_every, self.device)
        self.amp = Amp(config.precision, self.device)
        self.g_scaler, self.d_scaler = self.amp.scaler(), self.amp.scaler()
        self.ada = AdaptiveP(config, self.images_per_step)
        self.mean_path_length = torch.zeros((), device=self.device)
        self.last_r1 = torch.zeros((), device=self.device)
        self.last_path = torch.zeros((), device=self.device)
        # the grid's z come from their own generator: logging never moves the training's random streams
        self.sample_z = torch.randn(config.sample_count, config.style_dim,
                                    generator=torch.Generator().manual_seed(config.seed)).to(self.device)

    def _initialise(self, spec: str) -> None:
        """Fine-tuning: G (the file's 'g', else its 'g_ema'), G's average ('g_ema'), D ('d') when the file has it."""
        source = read_weights(spec, "g_ema", self.config.weights_dir)
        load_into(self.g_ema, source.state, f"{source.path} ['g_ema']")
        load_into(self.g, source.others.get("g", source.state), f"{source.path} ['g']")
        if "d" in source.others:
            load_into(self.d, source.others["d"], f"{source.path} ['d']")
        elif self.group.main:
            print(f"{source.path} has no discriminator ('d'): D starts from scratch", flush=True)

    def networks(self):
        return {"g": self.g, "d": self.d, "g_ema": self.g_ema}

    def optimisers(self):
        return {"g_optim": self.g_optim, "d_optim": self.d_optim}

    def scalers(self):
        return {"g": self.g_scaler, "d": self.d_scaler}

    def constructor_configs(self):
        g, d = self.config.generator_config(), self.config.discriminator_config()
        return {"g": g, "g_ema": g, "d": d}

    def extra_state(self):
        """rosinality's 'ada_aug_p', plus what a resumed run needs to continue the same way."""
        return {"ada_aug_p": self.ada.p, "ada_signs": self.ada.signs.cpu(), "ada_r_t": self.ada.r_t,
                "mean_path_length": self.mean_path_length.cpu(),
                "last_losses": {"r1": self.last_r1.cpu(), "path": self.last_path.cpu()}}

    def load_extra_state(self, checkpoint: Mapping[str, Any]) -> None:
        self.ada.p = float(checkpoint.get("ada_aug_p", self.ada.p))
        self.ada.signs = checkpoint.get("ada_signs", self.ada.signs).to(self.device)
        self.ada.r_t = float(checkpoint.get("ada_r_t", 0.0))
        self.mean_path_length = checkpoint.get("mean_path_length", self.mean_path_length).to(self.device)
        last = checkpoint.get("last_losses", {})
        self.last_r1 = last.get("r1", self.last_r1).to(self.device)
        self.last_path = last.get("path", self.last_path).to(self.device)

    def export(self) -> Export:
        return Export(self.g_ema, "models.stylegan2:Generator", self.config.generator_config(), "g_ema")

    def train_step(self, step: int, real: torch.Tensor) -> dict[str, torch.Tensor]:
        config = self.config
        if config.xflip:
            flip = torch.rand(real.shape[0], device=self.device) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(3), real)
        d_loss, real_pred, fake_pred = self._discriminator_step(real)
        self.ada.observe(real_pred, step, self.group)
        if step % config.d_reg_every == 0 and config.r1 > 0:
            self.last_r1 = self._r1_step(real)
        g_loss = self._generator_step()
        if step % config.g_reg_every == 0 and config.path_regularize > 0:
            self.last_path = self._path_step()
        images_seen = (step + 1) * self.images_per_step
        ema_update(self.g_ema, self.g, ema_decay(config, self.images_per_step, images_seen))
        return {"d": d_loss, "g": g_loss, "r1": self.last_r1, "path": self.last_path,
                "real_score": real_pred.mean(), "fake_score": fake_pred.mean()}

    def _discriminator_step(self, real: torch.Tensor):
        requires_grad(self.g, False)
        requires_grad(self.d, True)
        with torch.no_grad(), self.amp.autocast():  # G is not trained here: call it unwrapped
            fake, _ = self.g(mixing_noise(real.shape[0], self.config.style_dim, self.config.mixing, self.device),
                             randomize_noise=True)
        with self.amp.autocast():
            fake_pred = self.d_train(augment_images(fake, self.ada.p))
            real_pred = self.d_train(augment_images(real, self.ada.p))
            loss = d_logistic_loss(real_pred.float(), fake_pred.float())
        optimise(loss, self.d_optim, self.d_scaler, self.d)
        return loss.detach(), real_pred.detach().float(), fake_pred.detach().float()

    def _r1_step(self, real: torch.Tensor) -> torch.Tensor:
        """Lazy R1 in fp32 (double backward); the 0 * pred term lets DDP see every parameter used."""
        real = real.detach().requires_grad_(True)
        real_pred = self.d_reg_train(augment_images(real, self.ada.p))
        penalty = r1_penalty(real_pred, real)
        loss = self.config.r1 / 2 * penalty * self.config.d_reg_every + 0 * real_pred[0, 0]
        optimise(loss, self.d_optim, self.d_scaler, self.d)
        return penalty.detach()

    def _generator_step(self) -> torch.Tensor:
        requires_grad(self.g, True)
        requires_grad(self.d, False)
        with self.amp.autocast():
            fake, _ = self.g_train(mixing_noise(self.config.batch_size, self.config.style_dim, self.config.mixing,
                                                self.device), randomize_noise=True)
            loss = g_nonsaturating_loss(self.d(augment_images(fake, self.ada.p)).float())  # D frozen: unwrapped
        optimise(loss, self.g_optim, self.g_scaler, self.g)
        return loss.detach()

    def _path_step(self) -> torch.Tensor:
        """Lazy path-length regularisation in fp32; the running mean is shared by all ranks."""
        batch = max(1, self.config.batch_size // self.config.path_batch_shrink)
        fake, latents = self.g_reg_train(mixing_noise(batch, self.config.style_dim, self.config.mixing, self.device),
                                         return_latents=True, randomize_noise=True)
        lengths = path_lengths(fake, latents)
        mean = self.mean_path_length + 0.01 * (self.group.mean(lengths.detach().mean()) - self.mean_path_length)
        penalty = (lengths - mean).pow(2).mean()
        loss = self.config.path_regularize * self.config.g_reg_every * penalty + 0 * fake[0, 0, 0, 0]
        optimise(loss, self.g_optim, self.g_scaler, self.g)
        self.mean_path_length = mean.detach()
        return penalty.detach()

    @torch.no_grad()
    def samples(self):
        images, _ = self.g_ema([self.sample_z], randomize_noise=False)
        return {"g_ema": (images, int(math.ceil(math.sqrt(len(images)))))}

    def scalars(self):
        return {"augment/p": self.ada.p, "augment/r_t": self.ada.r_t,
                "path/mean_length": float(self.mean_path_length)}


def lazy_adam(parameters, lr: float, reg_every: int, device: torch.device) -> torch.optim.Adam:
    """Adam with StyleGAN2's corrections for a regulariser run every `reg_every` steps: lr and betas scaled by
    reg_every / (reg_every + 1), so the extra steps do not change the effective schedule."""
    ratio = reg_every / (reg_every + 1)
    return adam(parameters, device, lr=lr * ratio, betas=(0 ** ratio, 0.99 ** ratio))


def train_generator(config: GeneratorTrainingConfig, stop_after: int | None = None) -> TrainingSummary:
    """Train (or resume) the generator of `config`; see `training.common.loop.train`."""
    return train(GeneratorStage, config, lambda c: c.size, stop_after)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.generator [--config FILE] [key=value ...]` (also what torchrun runs on every rank)."""
    path, overrides = command_line(argv if argv is not None else sys.argv[1:], __doc__)
    train_generator(load_config(GeneratorTrainingConfig, path, overrides))


if __name__ == "__main__":
    main()
