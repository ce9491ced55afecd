"""Inference precision: one place that says what `fp32`, `bf16` and `fp16` mean for a network, and casts it.

    cast_networks("bf16", generator, transformer)      # weights and buffers in bfloat16, in place
    network_dtype(generator)                           # torch.bfloat16

bf16 / fp16 mean the networks' weights and activations in that dtype (half the bytes moved, tensor-core
convolutions), not autocast around fp32 weights (which converts every weight at every call and bought nothing on
an H200). Networks cast their inputs (`models.stylegan2.Generator.synthesis` casts its codes), so callers
hand in fp32 and cast the result back when they need fp32. Where a dtype is worth it is the caller's choice:
`tasks/` keep fp32 on a CPU, where half precision is emulated or slow; tests run bf16 on the CPU to check it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(precision: str) -> torch.dtype:
    """The torch dtype of a precision's name (a clear error for another name)."""
    try:
        return DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}") from None


def cast_networks(precision: str, *networks: nn.Module | None) -> None:
    """Every floating-point parameter and buffer of `networks` (None entries are skipped) in `precision`'s dtype,
    in place. fp32 on fp32 networks changes nothing (no copy)."""
    dtype = dtype_of(precision)
    for network in networks:
        if network is not None:
            network.to(dtype)


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """Autocast to `precision`'s dtype on CUDA, for the networks that keep fp32 weights (the encoder, the Net3D);
    nothing on a CPU or for fp32."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=dtype_of(precision))


def network_dtype(network: nn.Module) -> torch.dtype:
    """The dtype of a network's first floating-point parameter (fp32 for a network without any)."""
    for parameter in network.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32
