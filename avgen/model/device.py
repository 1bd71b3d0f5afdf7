"""Where the model runs and in what precision.

CUDA: bf16 autocast around the network (fused SDPA kernels come with it), optional
`torch.compile`. CPU: fp32 (bf16 on this project's CPUs is far slower, docs/MACHINE.md).
Apple MPS: fp32. Initial noise is always drawn on the CPU (see `pipeline.py`), so one seed
means one clip on every device, up to the arithmetic differences of the device.
"""
from __future__ import annotations

import contextlib

import torch

from avgen.model.config import DEVICES


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA, then Apple MPS, then CPU; an explicit device that is absent raises ValueError."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no usable CUDA GPU")
    if name == "mps" and not mps:
        raise ValueError("device 'mps' asked for, but Apple MPS is not available here")
    return torch.device(name)


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing elsewhere (the CPU path computes in fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`torch.compile` the network when asked. On CPU inductor fuses the elementwise ops between the
    matmuls (about 1.2x faster loops, `avgen bench --captured`), after a first call that compiles for
    about a minute (seconds once inductor's on-disk cache holds the graphs). Results match eager to
    ~1e-5, not bit for bit. On CUDA it also pays for long sampling runs."""
    if not enabled:
        return model
    # dynamic=False: one clip length per run; a new length recompiles once
    return torch.compile(model, dynamic=False)
