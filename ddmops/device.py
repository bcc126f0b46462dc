"""Compute-device choice (the GPU when present, the CPU otherwise) and what makes it fast:
TF32 tensor cores for fp32 work on GPUs, autocast precision, and opt-in ``torch.compile``
with a fallback to eager execution where compilation is unavailable."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]


def pick_device(name: str | None = None) -> torch.device:
    """``name`` ('cpu', 'cuda', 'cuda:1', ...) if given, else CUDA when available, else CPU.
    On CUDA, fp32 matrix products and convolutions may use TF32 tensor cores."""
    device = torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms
    return device


def autocast(device: torch.device, precision: Precision):
    """Mixed precision on CUDA for 'bf16'/'fp16' (convolutions, linear layers and attention in
    half precision on tensor cores; norms and the loss in fp32); nothing otherwise."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def compiled(fn: Callable, enabled: bool, what: str) -> Callable:
    """``torch.compile(fn)`` when ``enabled``; where compilation is unavailable (no compiler,
    an unsupported platform), the first call says so in one line and runs ``fn`` eagerly."""
    if not enabled:
        return fn
    try:
        fast = torch.compile(fn)
    except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
        _note(what, exc)
        return fn
    state = {"fn": fast, "tried": False}

    def call(*args, **kwargs):
        if state["tried"]:
            return state["fn"](*args, **kwargs)
        try:
            out = state["fn"](*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - compilation happens at the first call
            _note(what, exc)
            state["fn"] = fn
            out = fn(*args, **kwargs)
        state["tried"] = True
        return out
    return call


def _note(what: str, exc: Exception) -> None:
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    print(f"note: torch.compile unavailable for {what} ({type(exc).__name__}: {first}); running eagerly",
          file=sys.stderr, flush=True)
