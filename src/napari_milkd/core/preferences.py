"""milkd's own preferences: a small JSON object in the user config folder, kept across sessions.

Owns where the file is (``$MILKD_CONFIG_DIR``, else platformdirs' user config folder:
``~/.config/napari-milkd/preferences.json`` on Linux), reading it forgivingly (a missing or damaged file
is ``{}``: it only ever holds choices that have a default) and writing it atomically. Keys in use:
``projects_root`` and ``earlier_projects_roots`` (:mod:`napari_milkd.core.session.project`),
``slide_reader_offered`` (the widget asked once whether milkd should open slides in napari).
May import platformdirs and the standard library.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from napari_milkd.core.atomic import write_json_atomic

#: Environment variable that overrides the folder of the preferences file (tests use a temporary one).
CONFIG_ENV = "MILKD_CONFIG_DIR"


def preferences_path() -> Path:
    """The preferences file: ``preferences.json`` in ``$MILKD_CONFIG_DIR``, else in the user config folder."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser() / "preferences.json"
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-milkd", appauthor=False)) / "preferences.json"


def load_preferences() -> dict[str, Any]:
    """The saved preferences, or ``{}`` when there are none or the file is not a JSON object."""
    try:
        saved = json.loads(preferences_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def save_preferences(**values: Any) -> None:
    """Set ``values`` in the preferences file (atomically; other keys are kept). Raises
    :class:`~napari_milkd.core.errors.WriteError` when it cannot be written."""
    write_json_atomic(preferences_path(), {**load_preferences(), **values})
