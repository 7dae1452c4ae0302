"""Subcommands of the ``milkd`` CLI, one module each; see :mod:`napari_milkd.cli`.

Each module exposes ``register(subparsers)``. Commands parse arguments, call the headless core, and print;
heavy imports (torch, napari) happen inside the command function, not at import time.
"""
