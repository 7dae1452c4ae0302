"""The ``milkd`` command line: a thin front-end over :mod:`napari_milkd.core`.

Each subcommand lives in its own module under :mod:`napari_milkd.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (``args -> int``). This module owns
only argument dispatch and the error contract: a :class:`~napari_milkd.core.errors.MilkdError` (or a
missing file, or bad usage) prints one line ``milkd: error: ...`` on stderr and exits with 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence

from napari_milkd import __version__
from napari_milkd.core.errors import MilkdError

#: Subcommand modules, in the order ``milkd --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "napari_milkd.commands.info",
    "napari_milkd.commands.demo",
    "napari_milkd.commands.train",
    "napari_milkd.commands.evaluate",
    "napari_milkd.commands.predict",
    "napari_milkd.commands.annotations",
)

#: Subcommands that load torch: under an address-space limit too small for it they stop with one line
#: before it is loaded (:func:`napari_milkd.core.runtime.check_room_for_torch`).
TORCH_COMMANDS: frozenset[str] = frozenset({"train", "evaluate", "predict", "demo"})


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors follow the one-line ``milkd: error:`` contract (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"milkd: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``milkd`` parser with every subcommand registered."""
    parser = _Parser(prog="milkd", description="napari-milkd: tumour masks from coarse labels.")
    parser.add_argument("--version", action="version", version=f"napari-milkd {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def fail(message: str) -> int:
    """Print the one-line error contract and return the exit code 2."""
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    sys.stderr.write(f"milkd: error: {first_line}\n")
    _quiet_abandoned_writes()
    return 2


def _quiet_abandoned_writes() -> None:
    """Writes still in flight on zarr's I/O loop die with a failed run; the error line already says why,
    so their "never retrieved" / "never awaited" reports at exit would only bury it in tracebacks."""
    logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in str(record.msg)
    )
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``milkd`` command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in TORCH_COMMANDS:
            from napari_milkd.core.runtime import check_room_for_torch

            check_room_for_torch()
        return int(args.func(args) or 0)
    except MilkdError as exc:
        return fail(str(exc))
    except FileNotFoundError as exc:
        return fail(f"no such file or folder: {exc.filename or exc}")
    except PermissionError as exc:
        return fail(f"permission denied: {exc.filename or exc}")
    except KeyboardInterrupt:
        sys.stderr.write("milkd: interrupted\n")
        return 130
    except (MemoryError, RuntimeError, ImportError) as exc:
        from napari_milkd.core.runtime import allocation_failure

        needed = allocation_failure(exc)
        if needed is None:
            raise
        what = f" (needed {needed})" if needed else ""
        return fail(
            f"out of memory{what}; allow milkd more memory (ulimit -v, the container's limit), or lower "
            "--batch-size"
        )


if __name__ == "__main__":
    raise SystemExit(main())
