"""The CLI flags of the training settings, generated from their one description.

Owns :func:`add_setting_flags`, which turns entries of :data:`napari_milkd.core.engine.settings.SETTINGS`
into argparse flags (``milkd train``'s config flags, and the few ``milkd demo`` shares). The flag's name,
help, metavar and choices come from the setting, its type from the ``TrainConfig`` field. May import the
standard library and :mod:`napari_milkd.core.engine.settings` only (no torch, no numpy).
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from napari_milkd.core.engine.settings import SETTINGS


def flag_options(name: str) -> dict[str, Any]:
    """The ``add_argument`` keywords of setting ``name``'s flag (``dest`` is the field name).

    A ``str`` field takes the text as is, ``int`` and ``float`` convert it, a ``tuple`` of n numbers takes
    n of them (``nargs``), and a ``bool`` field (on by default) is a ``--no-`` switch that stores ``False``.
    """
    setting = SETTINGS[name]
    options: dict[str, Any] = {"dest": name, "default": setting.cli_value, "help": setting.cli_help}
    kind = setting.kind
    if kind is bool:
        options.update(action="store_const", const=False)
    elif typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        options.update(type=items[0], nargs=len(items))
    elif kind is not str:
        options["type"] = kind
    if setting.metavar is not None:
        options["metavar"] = setting.metavar
    if setting.parser_checks:
        options["choices"] = setting.choices
    return options


def add_setting_flags(
    parser: argparse.ArgumentParser, names: Iterable[str], defaults: Mapping[str, Any] | None = None
) -> None:
    """Add the flags of the settings ``names`` to ``parser``, in that order; ``defaults`` replaces the
    value a flag parses to when it is not given (field name → value; otherwise the setting's
    ``cli_value``)."""
    for name in names:
        options = flag_options(name)
        if defaults and name in defaults:
            options["default"] = defaults[name]
        parser.add_argument(SETTINGS[name].flag, **options)
