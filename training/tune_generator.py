"""Tuning G on one source face before reenacting it: the official inference's `optimize_generator` step.

    tuned, report = tune_generator(generator, code, target, GeneratorTuningConfig(steps=200))

An encoder's W+ code reconstructs a real face only roughly (background, hair, identity detail). The official
inference therefore fine-tunes a copy of G on the source image for 200 Adam steps (lr 3e-3), with the code fixed:

    loss = l2_weight * mean (G(code) - x)^2 + lpips_weight * LPIPS(G(code), x)

and only the convolutions from 32 px up (`convs[4:]`, with l2_weight 100; all of G with l2_weight 1). `code` is what
reenactment renders for the source itself (the official code truncates it towards G's mean w first); x is the
source crop at G's resolution. The shifted codes w_source + A(Δp) are then rendered by the tuned copy, so the
detail it learned moves with the pose. PTI's locality regulariser is off in the official call, and so here.
G itself is not changed. The copy is tuned in fp32 whatever G's dtype (Adam on bf16 weights would lose most
updates) and handed back in G's dtype; the steps run without waiting for the device (losses are read once, at
the end).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, Field

from models.precision import network_dtype
from models.stylegan2 import Generator
from training.common.loop import requires_grad

if TYPE_CHECKING:
    from training.encoder import Distance

FIRST_TUNED_RESOLUTION = 32  # the official `convs[4..11]` of the 256 px G: both convolutions of 32 px and above


class GeneratorTuningConfig(BaseModel):
    """The official `optimize_g` settings (steps, learning rate, which layers, the loss weights)."""

    steps: int = Field(200, ge=1, description="Adam steps on the source image.")
    lr: float = Field(3e-3, gt=0, description="Adam's learning rate.")
    layers: Literal["from-32px", "all"] = Field("from-32px", description="Which of G's parameters move: the convolutions from 32 px up (official default), or all of G.")
    l2_weight: float | None = Field(None, ge=0, description="Weight of the pixel L2 term; default: 100 for 'from-32px', 1 for 'all' (as the official code).")
    lpips_weight: float = Field(1.0, ge=0, description="Weight of LPIPS (needs AlexNet's ImageNet weights); 0 tunes on pixels alone.")

    def pixel_weight(self) -> float:
        if self.l2_weight is not None:
            return self.l2_weight
        return 100.0 if self.layers == "from-32px" else 1.0


def tuned_parameters(generator: Generator, layers: str) -> list[torch.nn.Parameter]:
    """The parameters the tuning moves: every one, or those of the convolutions at 32 px and above."""
    if layers == "all":
        return list(generator.parameters())
    first = 2 * (generator.block_index(FIRST_TUNED_RESOLUTION) - 1)  # convs[2k-2], convs[2k-1] belong to block k
    return [parameter for conv in list(generator.convs)[first:] for parameter in conv.parameters()]


def tune_generator(generator: Generator, code: torch.Tensor, target: torch.Tensor, config: GeneratorTuningConfig,
                   perceptual: Distance | None,
                   render: Callable[[Generator], torch.Tensor] | None = None,
                   step_done: Callable[[], None] = lambda: None) -> tuple[Generator, dict]:
    """A copy of `generator` tuned so that G(code [1, L, D]) reproduces `target` [1, 3, size, size] in [-1, 1].

    `render(G)`: how the source is drawn by a G, when more than G draws it (a Feature Transformer on top: tuning
    then fits what reenactment will show). `step_done()` after each step (the caller's progress). Returns the tuned copy (frozen, in eval mode) and a report: steps,
    seconds, and the loss terms before and after."""
    if config.lpips_weight > 0 and perceptual is None:
        raise ValueError("generator tuning with lpips_weight > 0 needs the LPIPS distance")
    if target.shape[-1] != generator.size:
        raise ValueError(f"the tuning target must be at G's resolution {generator.size}, got {tuple(target.shape)}")
    dtype = network_dtype(generator)
    tuned = copy.deepcopy(generator).float()
    requires_grad(tuned, False)
    parameters = tuned_parameters(tuned, config.layers)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimiser = torch.optim.Adam(parameters, lr=config.lr)
    code, target = code.detach(), target.detach()
    pixel_weight = config.pixel_weight()

    draw = render or (lambda network: network.synthesis(code).image)

    def terms() -> dict[str, torch.Tensor]:
        image = draw(tuned)
        losses = {"l2": torch.mean((image - target) ** 2)}
        if config.lpips_weight > 0:
            losses["lpips"] = perceptual(image, target).mean()
        return losses

    started = time.perf_counter()
    first = last = None
    for _ in range(config.steps):
        losses = terms()
        loss = pixel_weight * losses["l2"] + config.lpips_weight * losses.get("lpips", 0.0)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        last = {name: value.detach() for name, value in losses.items()}
        first = first or last
        step_done()
    with torch.no_grad():
        after = {name: float(value) for name, value in terms().items()}
    requires_grad(tuned, False)
    report = {"steps": config.steps, "layers": config.layers, "seconds": time.perf_counter() - started,
              "before": _floats(first), "after": after, "last_step": _floats(last)}
    return tuned.to(dtype).eval(), report


def _floats(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in losses.items()}
