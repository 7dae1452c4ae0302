"""Where work runs: device choice, CPU thread caps, returning GPU memory.

Used by training and inference alike. Importing this module does not load torch (each function imports it
when called), so front ends can list devices lazily. May import the standard library and torch.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from napari_milkd.core.errors import InputError, MilkdError

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


#: Address space the BLAS libraries need for the work buffers they map on their first call: numpy's and
#: scipy's OpenBLAS map 32 MiB each on x86-64; with a margin.
BLAS_RESERVE_BYTES = 128 << 20


def address_space_left() -> int | None:
    """Bytes this process may still map under its address-space limit (``ulimit -v``), or None when the
    limit is unlimited or cannot be read (not Linux)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[0])
        return soft - pages * resource.getpagesize()
    except (ImportError, OSError, ValueError, IndexError):
        return None


def reserve_blas() -> None:
    """Make numpy's and scipy's BLAS map their work buffers now, at the start of a job, while memory is left.

    OpenBLAS maps its buffer on its first call (any float matrix product or inverse, even one run by a
    library's import: ``skimage.color`` inverts a matrix when tissue detection first imports it). When the
    map fails, as under ``ulimit -v``, numpy's copy prints ``OpenBLAS error: Memory allocation still
    failed after 10 retries, giving up.`` and exits the process, and scipy's copy hangs: no exception ever
    reaches Python, so no clean error can be given. The buffers are kept and reused, so after this call
    later products do not map them again. Raises :class:`MemoryError` (``cannot allocate N bytes``, N
    what is missing) when the address-space limit leaves less than :data:`BLAS_RESERVE_BYTES`, instead.
    """
    import numpy as np

    left = address_space_left()
    if left is not None and left < BLAS_RESERVE_BYTES:
        raise MemoryError(f"cannot allocate {BLAS_RESERVE_BYTES - max(left, 0)} bytes")
    square = np.ones((2, 2))
    square @ square
    try:
        from scipy.linalg import blas
    except ImportError:  # scipy is optional here; without it nothing maps a second buffer
        return
    blas.dgemm(1.0, square, square)


#: Address space ``import torch`` maps for its libraries (about 480 MiB, 495 MiB at the peak, for torch 2
#: on CPU, Linux x86-64), with a margin.
TORCH_IMPORT_BYTES = 512 << 20


def check_room_for_torch() -> None:
    """Raise :class:`MilkdError` (one line) when the address-space limit (``ulimit -v``) leaves too little
    for torch to load; a no-op when torch is loaded or there is no limit.

    Short of that room, ``import torch`` does not raise one clean error: its C++ start-up aborts the process
    (``std::bad_alloc``), or Python fails half-way with a ``MemoryError`` or an ``ImportError`` (``failed
    to map segment``). So the commands that need torch ask first.
    """
    import sys

    if "torch" in sys.modules:
        return
    left = address_space_left()
    if left is not None and left < TORCH_IMPORT_BYTES:
        mib = max(left, 0) >> 20
        raise MilkdError(
            f"out of memory: the address-space limit (ulimit -v) leaves {mib} MiB, and loading torch needs "
            f"about {TORCH_IMPORT_BYTES >> 20} MiB; raise the limit by at least "
            f"{(TORCH_IMPORT_BYTES >> 20) - mib} MiB"
        )


_BYTES = re.compile(r"allocate (\d+) bytes")
_SIZE = re.compile(r"allocate ([\d.]+ [KMGTP]?i?B)")


def _human(n_bytes: int) -> str:
    value, unit = float(n_bytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"


def allocation_failure(exc: BaseException) -> str | None:
    """What a failed allocation needed (``"48.0 MiB more"``, ``"memory for another thread"``, or ``""``
    when it does not say), or None when ``exc`` is not an allocation failure.

    Recognises what memory caps (``ulimit -v``, a container limit) raise: ``MemoryError`` (numpy's
    ``_ArrayMemoryError`` too), torch's ``DefaultCPUAllocator`` and ``std::bad_alloc`` errors,
    ``can't start new thread``, and a library loaded on first use that cannot be mapped (``ImportError``).
    """
    text = str(exc)
    if isinstance(exc, MemoryError):
        pass
    elif isinstance(exc, ImportError):  # a library loaded on first use cannot be mapped
        if "failed to map segment" not in text and "cannot allocate memory" not in text.lower():
            return None
    elif not isinstance(exc, RuntimeError) or not any(
        key in text
        for key in (
            "DefaultCPUAllocator",
            "can't allocate memory",
            "can't start new thread",
            "out of memory",
            "std::bad_alloc",
        )
    ):
        return None
    if match := _BYTES.search(text):
        return f"{_human(int(match.group(1)))} more"
    if match := _SIZE.search(text):
        return f"{match.group(1)} more"
    if "can't start new thread" in text:
        return "memory for another thread"
    return ""
