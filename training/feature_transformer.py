"""train-feature-transformer: the Feature Transformer (`models.feature_transformer`) trained with G, the encoder's
codes and A frozen, on two frames of one clip, so that reenacted faces keep the real source's detail.

    w_s = the store's inversion of the source frame x_s,  Δp = p_target - p_source (the store's face3d readings)
    reenacted = Reenactor(G, A, transformer)(w_s, p_s, p_t, source_image=x_s)   (inference's own step)
    loss = l1_weight * mean |reenacted - x_t| + lpips_weight * LPIPS(reenacted, x_t)

x_t is another frame of the source's clip (the same person, background and hair in another pose), so the only
way to lower the loss is to carry the source's detail to the target pose. A share of the pairs (`self_fraction`)
takes x_t = x_s (Δp = 0): reconstructing the source itself, which is what frame 0 of a self-reenactment shows.
The transformer starts as the identity (its last layers are zero), so step 0 renders what G alone renders; the
log's `val/l1` and `val/l1_plain` are both on fixed validation pairs, with and without the transformer.

Needs a store with encode-dataset's face3d (of the Net3D that A was trained with) and inversion stages. LPIPS has
weight 0 by default because its AlexNet trunk is not shipped (as train-encoder).

    python -m training.feature_transformer --config ft.yaml generator=runs/g/generator.safetensors
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from models.directions import SHIFT_SCALE, ParamRanges
from models.feature_transformer import FeatureTransformer
from models.images import resize_to
from models.reenact import Reenactor
from storage.weights import WeightsRegistry
from training.common.checkpoints import Export
from training.common.config import TrainingConfig, command_line, load_config
from training.common.distributed import Distributed, wrap
from training.common.loop import Amp, Stage, TrainingSummary, adam, optimise, requires_grad, train
from training.data import StoreCrops
from training.directions import StoreFrames, store_crop_size
from training.encoder import frozen_generator, perceptual_distance


class FeatureTransformerTrainingConfig(TrainingConfig):
    """train-feature-transformer's settings."""

    out: str = Field("outputs/train-feature-transformer", description="Run directory (checkpoints, logs, samples, the export).")
    steps: int = Field(20_000, ge=1, description="Optimiser steps.")
    batch_size: int = Field(8, ge=1, description="Pairs per step and process.")
    generator: str = Field("demo-generator", description="The frozen G: a weights-registry name, or a .safetensors / official .pt file ('g_ema').")
    directions: str = Field("demo-directions", description="The frozen A: a weights-registry name or train-directions' .safetensors export (with its ranges table).")
    weights_dir: str | None = Field(None, description="Weights directory for registry names (generator, directions, LPIPS's AlexNet).")
    face3d: str = Field("synth-regressor", description="The Net3D whose face3d stage in the store gives p (the one A was trained with).")
    truncation: float = Field(1.0, gt=0, le=1, description="Truncation of the rendered codes towards G's mean w, as the inference renders them (official set: 0.7; demo: 1).")
    mean_latent_samples: int = Field(4096, ge=1, description="z samples of G's mean w (as the Reenactor computes it, seed 0).")
    resolution: int = Field(32, ge=8, description="G's block whose features are refined (official G: 32 px, with 512 channels).")
    hidden: int = Field(64, ge=8, description="Channels of the transformer's own convolutions.")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate.")
    l1_weight: float = Field(1.0, ge=0, description="Weight of the pixel L1 against the target frame.")
    lpips_weight: float = Field(0.0, ge=0, description="Weight of LPIPS against the target frame; needs AlexNet's ImageNet weights.")
    lpips_random_backbone: bool = Field(False, description="Run the LPIPS term with a random AlexNet trunk (tests and timing; not LPIPS).")
    self_fraction: float = Field(0.25, ge=0, le=1, description="Share of each batch whose target is the source frame itself (Δp = 0).")
    validation_count: int = Field(8, ge=1, description="Fixed pairs whose L1 is logged with and without the transformer.")
    sample_count: int = Field(4, ge=1, description="Pairs in the logged grid (source, target, G alone, with the transformer).")


def frozen_directions(config: FeatureTransformerTrainingConfig, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """A (frozen) and its file's entries, from the registry or a train-directions export."""
    directions, entries = WeightsRegistry(config.weights_dir).load_spec(config.directions, device,
                                                                        expect="models.directions:DirectionMatrix")
    requires_grad(directions, False)
    return directions, entries


class FeatureTransformerStage(Stage):
    """The transformer, its optimiser, the frozen Reenactor (G, A, ranges) around it, the pairs and one step."""

    name = "feature_transformer"  # the export: <out>/feature_transformer.safetensors

    def __init__(self, config: FeatureTransformerTrainingConfig, group: Distributed, dataset: StoreCrops):
        self.config, self.group, self.device = config, group, group.device
        generator = frozen_generator(config, self.device)
        directions, entries = frozen_directions(config, self.device)
        self.transformer = FeatureTransformer(generator.channels[config.resolution], config.resolution,
                                              generator.size, config.hidden).to(self.device)
        self.transformer.block(generator)  # G fits the transformer (a clear error otherwise)
        ranges = ParamRanges.of_directions(entries)
        self.reenactor = Reenactor(generator, directions, ranges, float(entries.get("shift_scale", SHIFT_SCALE)),
                                   config.truncation, config.mean_latent_samples, transformer=self.transformer)
        self.transformer_train = wrap(self.transformer, group)
        self.optimiser = adam(self.transformer.parameters(), self.device, lr=config.lr)
        self.amp = Amp(config.precision, self.device)
        self.scaler = self.amp.scaler()
        self.frames = StoreFrames(dataset, config.face3d, need_inversion=True)
        self.perceptual = perceptual_distance(config, self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(config.seed + 2)  # fixed validation pairs, the training stream untouched
            self.validation = self._pairs(config.validation_count)

    @torch.no_grad()
    def _pairs(self, count: int) -> dict[str, torch.Tensor]:
        """Sources and targets of `count` pairs; the first `self_fraction` of them are their own targets."""
        items = self.frames.draw(count)
        partners = self.frames.partners(items)
        own = int(round(count * self.config.self_fraction))
        partners[:own] = items[:own]
        source = self.frames.read(items, self.device, wplus=True)
        target = self.frames.read(partners, self.device, wplus=False)
        size = self.reenactor.generator.size
        return {"wplus": source["wplus"], "source_params": source["params"], "target_params": target["params"],
                "source": resize_to(source["crops"], size), "target": resize_to(target["crops"], size)}

    def render(self, pairs: dict[str, torch.Tensor], transformer: torch.nn.Module | None) -> torch.Tensor:
        """The pairs reenacted by inference's own step: through `transformer` (the trained one, or its DDP wrapper),
        or by G alone with None."""
        source_image = pairs["source"] if transformer is not None else None
        return self.reenactor(pairs["wplus"], pairs["source_params"], pairs["target_params"],
                              source_image=source_image, refine=transformer)

    def losses(self, pairs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self.amp.autocast():
            reenacted = self.render(pairs, self.transformer_train).float()
        terms = {"l1": (reenacted - pairs["target"]).abs().mean()}
        if self.perceptual is not None:
            terms["lpips"] = self.perceptual(reenacted, pairs["target"]).mean()
        weights = {"l1": self.config.l1_weight, "lpips": self.config.lpips_weight}
        return sum(weights[name] * value for name, value in terms.items()), terms

    # --- the Stage interface

    def train_step(self, step: int, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step on pairs drawn from the store (the loop's crop batch is not used)."""
        total, terms = self.losses(self._pairs(self.config.batch_size))
        optimise(total, self.optimiser, self.scaler, self.transformer)
        return {"loss": total.detach(), **{name: value.detach() for name, value in terms.items()}}

    @torch.no_grad()
    def scalars(self) -> dict[str, float]:
        pairs = self.validation
        return {f"val/l1{suffix}": float((self.render(pairs, transformer) - pairs["target"]).abs().mean())
                for suffix, transformer in (("", self.transformer), ("_plain", None))}

    @torch.no_grad()
    def samples(self) -> dict[str, tuple[torch.Tensor, int]]:
        count = min(self.config.sample_count, self.config.validation_count)
        pairs = {name: value[:count] for name, value in self.validation.items()}
        grid = [pairs["source"], pairs["target"], self.render(pairs, None), self.render(pairs, self.transformer)]
        return {"refinement": (torch.cat(grid), count)}

    def networks(self):
        return {"feature_transformer": self.transformer}

    def optimisers(self):
        return {"optimiser": self.optimiser}

    def scalers(self):
        return {"transformer": self.scaler}

    def constructor_configs(self):
        return {"feature_transformer": self.transformer.config()}

    def export(self) -> Export:
        return Export(self.transformer, "models.feature_transformer:FeatureTransformer", self.transformer.config(),
                      "feature_transformer", entries={"generator": self.config.generator,
                                                      "directions": self.config.directions,
                                                      "truncation": self.config.truncation})


def train_feature_transformer(config: FeatureTransformerTrainingConfig,
                              stop_after: int | None = None) -> TrainingSummary:
    """Train (or resume) the Feature Transformer of `config`; see `training.common.loop.train`."""
    return train(FeatureTransformerStage, config, store_crop_size, stop_after)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.feature_transformer [--config FILE] [key=value ...]` (also what torchrun runs)."""
    path, overrides = command_line(argv if argv is not None else sys.argv[1:], __doc__)
    train_feature_transformer(load_config(FeatureTransformerTrainingConfig, path, overrides))


if __name__ == "__main__":
    main()
