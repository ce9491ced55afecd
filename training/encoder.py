"""train-encoder: an e4e encoder (`models.e4e.Encoder4Editing`) trained to invert a frozen generator on the store's
crops, so that a user with a new G also gets the encoder that `encode-dataset` needs.

    W+ = E(x)                   [B, n_latent, style_dim]: w0 on every layer plus a learned delta per layer
    loss = l2_weight       * mean (G(W+) - x)^2
         + lpips_weight    * LPIPS(G(W+), x)                        (perceptual_distance)
         + identity_weight * (1 - cos(ArcFace(G(W+)), ArcFace(x)))  (identity_distance)
         + delta_weight    * sum over layers i >= 1 of mean_b |W+_i - W+_0|   (e4e's delta regularisation)

x is the crop at G's resolution; the encoder reads it at `input_size` (256: the store's crops, as encode-dataset
passes them). w0 starts at G's mean w (the bias of the first style block is set to it), so training starts from
G's average face. e4e's progressive schedule is optional: with `progressive_every` > 0, only w0 is free until
`progressive_start`, then one more layer's delta every `progressive_every` steps.

Defaults that differ from e4e's recipe, because this machine has no network access and no weights:
- LPIPS has weight 0 by default: its AlexNet trunk (torchvision's ImageNet file) is not shipped. Put
  `alexnet-owt-7be5be79.pth` in the weights directory or torch hub's checkpoints and set `lpips_weight=0.8`;
  `lpips_random_backbone=true` runs the term with a random trunk (a random-feature distance, not LPIPS).
- The identity term has weight 0 by default: it needs ArcFace (`model_ir_se50.pth`, registry 'arcface-ir-se50');
  the offline dlib embedder is not differentiable, so it cannot be a loss.
- No latent discriminator on w (e4e's w-discriminator), and Adam instead of Ranger.

    python -m training.encoder --config enc.yaml generator=outputs/train-generator/generator.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from models.arcface import FRAME_SIZE, Backbone, arcface_input
from models.e4e import Encoder4Editing
from models.images import resize_to
from models.stylegan2 import Generator
from storage.weights import WEIGHT_FILES, WeightsRegistry
from training.common.checkpoints import Export, load_into, read_checkpoint, read_weights, save_export
from training.common.config import DTYPES, TrainingConfig, command_line, load_config
from training.common.distributed import Distributed, wrap
from training.common.loop import Amp, Stage, TrainingSummary, adam, maybe_compile, optimise, requires_grad, train
from training.data import StoreCrops, to_model_range

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # two image batches in [-1, 1] -> [B]
GENERATOR_DEFAULT = dict(WEIGHT_FILES["stylegan2-voxceleb256"].config)  # a .pt that does not say: the paper's G


class EncoderTrainingConfig(TrainingConfig):
    """train-encoder's settings; the loss weights are e4e's except where the module docstring says why not."""

    out: str = Field("outputs/train-encoder", description="Run directory (checkpoints, logs, samples, the export).")
    steps: int = Field(50_000, ge=1, description="Optimiser steps.")
    batch_size: int = Field(8, ge=1, description="Crops per step and process.")
    generator: str = Field("demo-generator", description="The frozen G to invert: a weights-registry name, or a .safetensors (train-generator's export) / official .pt file ('g_ema').")
    weights_dir: str | None = Field(None, description="Weights directory for registry names (generator, ArcFace, LPIPS's AlexNet).")
    num_layers: Literal[18, 50, 100, 152] = Field(50, description="Depth of the IR-SE trunk (50: the paper's; 18: a short one for small encoders).")
    mode: Literal["ir", "ir_se"] = Field("ir_se", description="Trunk units with ('ir_se') or without squeeze-excitation.")
    channel_max: int = Field(512, ge=8, description="At most this many channels in the trunk, pyramid and style blocks (512: the official widths).")
    input_size: int = Field(256, ge=16, description="Resolution the encoder reads (crops are resized to it).")
    init: str | None = Field(None, description="Fine-tune from an encoder: a registry name, or a .safetensors / .pt ('e') file.")
    backbone: str | None = Field(None, description="Start the trunk from ArcFace ('arcface-ir-se50', e4e's initialisation; official widths, IR-SE-50 only).")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate.")
    l2_weight: float = Field(1.0, ge=0, description="Weight of the pixel L2 reconstruction loss.")
    lpips_weight: float = Field(0.0, ge=0, description="Weight of LPIPS (e4e: 0.8); needs AlexNet's ImageNet weights.")
    lpips_random_backbone: bool = Field(False, description="Run the LPIPS term with a random AlexNet trunk (tests and timing; not LPIPS).")
    identity_weight: float = Field(0.0, ge=0, description="Weight of the ArcFace identity loss (e4e: 0.1-0.5); needs model_ir_se50.pth.")
    delta_weight: float = Field(2e-4, ge=0, description="Weight of e4e's W+ delta regularisation.")
    progressive_start: int = Field(0, ge=0, description="Steps with w0 alone before the first delta (with progressive_every > 0).")
    progressive_every: int = Field(0, ge=0, description="Steps between freeing one more W+ layer's delta; 0: all layers from the start.")
    mean_latent_samples: int = Field(4096, ge=1, description="z samples for G's mean w, w0's starting point.")
    sample_count: int = Field(8, ge=1, description="Crops in the logged grid (input above, reconstruction below).")
    decoder_lr: float | None = Field(None, gt=0, description="Also train G's synthesis network (not its mapping) as the encoder's decoder, at this learning rate: an autoencoder in W+, for a G too weak to invert (a GAN cut short); <out>/generator.safetensors is then the trained G. None: G stays frozen.")

    def encoder_config(self, size: int, style_dim: int) -> dict[str, Any]:
        """Constructor arguments of `Encoder4Editing` for a G of this size and style dimension (what the exported
        safetensors records)."""
        return {"num_layers": self.num_layers, "mode": self.mode, "size": size, "style_dim": style_dim,
                "channel_max": self.channel_max, "input_size": self.input_size}


# ------------------------------------------------------------------------------------------------------ losses

def perceptual_distance(config: EncoderTrainingConfig, device: torch.device) -> Distance | None:
    """The LPIPS term's distance, or None when its weight is 0 (one place to point at another LPIPS)."""
    if config.lpips_weight == 0:
        return None
    from storage.networks import lpips

    return lpips(WeightsRegistry(config.weights_dir), device, random_backbone=config.lpips_random_backbone)


def identity_distance(config: EncoderTrainingConfig, device: torch.device) -> Distance | None:
    """1 - ArcFace cosine on the official face window of the 256 frame, or None when its weight is 0."""
    if config.identity_weight == 0:
        return None
    registry = WeightsRegistry(config.weights_dir)
    backbone: Backbone = registry.get("arcface-ir-se50", device=device)
    requires_grad(backbone, False)

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        embeddings = backbone(arcface_input(_frame(torch.cat([a, b]))))
        first, second = embeddings.chunk(2)
        return 1 - (first * second).sum(1)

    return distance


def _frame(images: torch.Tensor) -> torch.Tensor:
    """Images at the 256 framing ArcFace's window is defined on."""
    if images.shape[-1] == FRAME_SIZE:
        return images
    return F.interpolate(images, (FRAME_SIZE, FRAME_SIZE), mode="bilinear", align_corners=False)


def delta_regularisation(wplus: torch.Tensor, layers: int) -> torch.Tensor:
    """e4e's: sum over W+ layers 1..layers of the mean L2 norm of (w_i - w0)."""
    if layers < 1:
        return wplus.new_zeros(())
    deltas = wplus[:, 1:layers + 1] - wplus[:, :1]
    return deltas.norm(dim=2).mean(0).sum()


def progressive_stage(config: EncoderTrainingConfig, step: int, style_count: int) -> int:
    """The last W+ layer with a free delta at `step` (style_count - 1: all of them)."""
    if config.progressive_every == 0:
        return style_count - 1
    if step < config.progressive_start:
        return 0
    return min(style_count - 1, 1 + (step - config.progressive_start) // config.progressive_every)


# ------------------------------------------------------------------------------------------------------- stage

def frozen_generator(config: EncoderTrainingConfig, device: torch.device) -> Generator:
    """The G to invert, from the registry or a file, with the architecture the file records, frozen."""
    source = read_weights(config.generator, "g_ema", config.weights_dir)
    generator = Generator(**(source.config or GENERATOR_DEFAULT))
    load_into(generator, source.state, f"{source.path} ['g_ema']")
    generator = generator.to(device).eval()
    requires_grad(generator, False)
    return generator


class EncoderStage(Stage):
    """The encoder, its optimiser, G (frozen, or trained as the decoder with `decoder_lr`), the loss terms, and one
    inversion step."""

    name = "encoder"

    def __init__(self, config: EncoderTrainingConfig, group: Distributed, dataset: StoreCrops):
        self.config, self.group, self.device = config, group, group.device
        self.generator = frozen_generator(config, self.device)
        self.arguments = config.encoder_config(self.generator.size, self.generator.style_dim)
        self.e = Encoder4Editing(**self.arguments).to(self.device)
        self._initialise()
        # BatchNorm statistics follow rank 0 (DDP's buffer broadcast); progressive stages leave style blocks unused
        self.e_train = wrap(self.e, group, find_unused_parameters=config.progressive_every > 0)
        self.e_forward = maybe_compile(self.e_train, config.compile, self.device)
        self.g_forward = maybe_compile(self.generator, config.compile, self.device)
        self.e_optim = adam(self.e.parameters(), self.device, lr=config.lr)
        self.decoder = config.decoder_lr is not None
        if self.decoder:  # the synthesis layers learn; the mapping network (z -> w) is not used by an inversion
            self.generator_arguments = read_weights(config.generator, "g_ema", config.weights_dir).config \
                or GENERATOR_DEFAULT
            synthesis = [p for name, p in self.generator.named_parameters() if not name.startswith("style.")]
            requires_grad(self.generator, True)
            requires_grad(self.generator.style, False)
            self.g_optim = adam(synthesis, self.device, lr=config.decoder_lr)
        self.amp = Amp(config.precision, self.device)
        self.e_scaler = self.amp.scaler()
        self.perceptual = perceptual_distance(config, self.device)
        self.identity = identity_distance(config, self.device)
        # the grid's crops: the first ones of the store, the same every time
        count = min(config.sample_count, len(dataset))
        self.sample_images = to_model_range(torch.stack(dataset.__getitems__(range(count))), self.device)

    def _initialise(self) -> None:
        """An encoder to fine-tune, or w0 at G's mean w (and optionally ArcFace's trunk)."""
        config = self.config
        if config.init:
            source = read_weights(config.init, "e", config.weights_dir)
            load_into(self.e, source.state, f"{source.path} ['e']")
            return
        with torch.no_grad():
            mean = self.generator.mean_latent(config.mean_latent_samples,
                                              generator=torch.Generator(self.device).manual_seed(config.seed))
            self.e.styles[0].linear.bias.copy_(mean[0])
        if config.backbone:
            self._load_trunk(config.backbone)

    def _load_trunk(self, spec: str) -> None:
        """e4e's start: the trunk (input layer and body) of an ArcFace IR-SE-50, a bare state dict."""
        trunk = {name: value for name, value in read_weights(spec, None, self.config.weights_dir).state.items()
                 if name.startswith(("input_layer.", "body."))}
        ours = {name: value.shape for name, value in self.e.state_dict().items()
                if name.startswith(("input_layer.", "body."))}
        if {name: value.shape for name, value in trunk.items()} != ours:
            raise ValueError(f"{spec} does not hold this encoder's trunk: ArcFace's fits num_layers=50, mode=ir_se, "
                             f"channel_max=512 only")
        self.e.load_state_dict(trunk, strict=False)

    def networks(self):
        return {"e": self.e, "g": self.generator} if self.decoder else {"e": self.e}

    def optimisers(self):
        return {"e_optim": self.e_optim, "g_optim": self.g_optim} if self.decoder else {"e_optim": self.e_optim}

    def scalers(self):
        return {"e": self.e_scaler}  # one scaler steps both optimisers of the one loss

    def constructor_configs(self):
        return {"e": self.arguments, "g": self.generator_arguments} if self.decoder else {"e": self.arguments}

    def extra_state(self):
        return {"generator": self.config.generator}

    def export(self) -> Export:
        return Export(self.e, "models.e4e:Encoder4Editing", self.arguments, "e")

    def invert(self, images: torch.Tensor, encoder, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(W+, G(W+)) of images in [-1, 1]; G's stored noise maps, as inference uses them."""
        wplus = encoder(images)
        reconstruction, _ = generator([wplus], input_is_latent=True, randomize_noise=False)
        return wplus, reconstruction

    def train_step(self, step: int, images: torch.Tensor) -> dict[str, torch.Tensor]:
        config = self.config
        stage = progressive_stage(config, step, self.e.style_count)
        self.e.progressive_stage = stage
        target = resize_to(images, self.generator.size)
        self.e.train()
        with self.amp.autocast():
            wplus, reconstruction = self.invert(images, self.e_forward, self.g_forward)
            reconstruction, wplus = reconstruction.float(), wplus.float()
            losses = {"l2": F.mse_loss(reconstruction, target), "delta": delta_regularisation(wplus, stage)}
            if self.perceptual is not None:
                losses["lpips"] = self.perceptual(reconstruction, target).mean()
            if self.identity is not None:
                losses["identity"] = self.identity(reconstruction, target).mean()
            weights = {"l2": config.l2_weight, "delta": config.delta_weight, "lpips": config.lpips_weight,
                       "identity": config.identity_weight}
            total = sum(weights[name] * value for name, value in losses.items())
        if self.decoder:
            self.g_optim.zero_grad(set_to_none=True)
            optimise(total, self.e_optim, self.e_scaler, self.e, also=self.g_optim)
        else:
            optimise(total, self.e_optim, self.e_scaler, self.e)
        return {"loss": total.detach(), **{name: value.detach() for name, value in losses.items()}}

    @torch.no_grad()
    def samples(self):
        self.e.eval()  # rank 0's own module: no collective call inside DDP
        _, reconstruction = self.invert(self.sample_images, self.e, self.generator)
        target = resize_to(self.sample_images, self.generator.size)
        return {"reconstruction": (torch.cat([target, reconstruction.float()]), len(target))}


def train_encoder(config: EncoderTrainingConfig, stop_after: int | None = None) -> TrainingSummary:
    """Train (or resume) the encoder of `config`; see `training.common.loop.train`. With `decoder_lr`, the trained
    G of the last checkpoint is exported beside the encoder as <out>/generator.safetensors."""
    summary = train(EncoderStage, config, lambda c: c.input_size, stop_after)
    if config.decoder_lr is not None and summary.steps == config.steps and summary.checkpoint:
        export_decoder(Path(summary.checkpoint), Path(summary.out) / "generator.safetensors", config)
    return summary


def export_decoder(checkpoint: Path, path: Path, config: EncoderTrainingConfig) -> Path:
    """G ('g') of an encoder checkpoint trained with `decoder_lr`, as train-generator exports G."""
    state = read_checkpoint(checkpoint)
    arguments = state["networks"]["g"]
    generator = Generator(**arguments)
    generator.load_state_dict(state["g"], strict=True)
    return save_export(Export(generator, "models.stylegan2:Generator", arguments, "g_ema"), path,
                       DTYPES[config.export_dtype], {"training": config.model_dump(mode="json"), "decoder_of": "e"})


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.encoder [--config FILE] [key=value ...]` (also what torchrun runs on every rank)."""
    path, overrides = command_line(argv if argv is not None else sys.argv[1:], __doc__)
    train_encoder(load_config(EncoderTrainingConfig, path, overrides))


if __name__ == "__main__":
    main()
