"""Picking the compute device (CUDA, then Apple's MPS, then the CPU) and its precision."""

from __future__ import annotations

import contextlib
import warnings

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("auto", "fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks the best device present; an explicit one must be available."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ValueError(f"device {name!r} was asked for but is not available on this machine")
    return torch.device(name)


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware, where autocast's bf16 matrix
    multiplies beat fp32's: CUDA, and CPUs with AVX512-BF16.

    AVX512-BF16 (Intel from Cooper Lake, Sapphire Rapids' AMX tiles included, which come with
    it; AMD from Zen 4) has dot-product instructions on bf16 pairs. Not the wider
    `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: it holds on any AVX-512 CPU, where oneDNN
    widens bf16 to fp32 in software, no faster than fp32. MPS stays fp32.
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` trains in bf16 where `device` has it natively, in fp32 elsewhere; an explicit
    bf16 is kept anywhere (autocast works on every device), with a warning where it is slow."""
    if name not in PRECISION_CHOICES:
        raise ValueError(
            f"unknown precision {name!r}; choose one of {', '.join(PRECISION_CHOICES)}"
        )
    native = has_native_bf16(device)
    if name == "auto":
        return "bf16" if native else "fp32"
    if name == "bf16" and not native:
        warnings.warn(
            f"this {device.type} has no native bf16 matrix multiply: bf16 autocast is emulated "
            "there and trains slower than fp32 (--precision fp32 or auto)",
            stacklevel=2,
        )
    return name


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for `precision` bf16: matrix multiplies in bf16, which on CUDA needs no
    loss scaling, while the weights, their gradients and AdamW's moments stay fp32 (so
    checkpoints are fp32 whatever the precision); nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
