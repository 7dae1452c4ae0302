"""Where work runs: device choice, CPU thread caps, returning GPU memory.

Used by training and inference alike. Importing this module does not load torch (each function imports it
when called), so front ends can list devices lazily. May import the standard library and torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from napari_milkd.core.errors import InputError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → cuda, then mps, then cpu; otherwise the named device (InputError if unavailable)."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but CUDA is not available")
    return device


def free_device_memory() -> None:
    """Return cached GPU memory to the driver (after a job ends or is cancelled); a no-op without CUDA
    or when torch was never loaded."""
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return
    gc.collect()  # an abandoned generator's tensors go with its frame
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def available_devices() -> list[tuple[str, str]]:
    """``(value, description)`` for the device choices: auto, cuda (with the card's name), mps, cpu."""
    import torch

    choices: list[tuple[str, str]] = []
    if torch.cuda.is_available():
        choices.append(("cuda", f"cuda: {torch.cuda.get_device_name(0)}"))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append(("mps", "mps: Apple GPU"))
    choices.append(("cpu", "cpu"))
    return [("auto", f"auto ({choices[0][1]})"), *choices]


def leave_cores_for_the_gui(n: int = 1) -> None:
    """Cap torch's CPU threads at cores − ``n`` so a GUI event loop keeps a core while a job trains
    (benchmarks/bench_gui.py: with every core busy the viewer stalls for tens of milliseconds)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - n))
