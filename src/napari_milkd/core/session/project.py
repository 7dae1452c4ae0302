"""The project folder that keeps a slide's work: weak labels, corrections, masks, checkpoints, settings.

Owns where the folder is, how arrays and settings are stored, what happens to a damaged file, and the
lock that keeps two sessions from writing the same project. May import numpy, platformdirs and the
standard library.

**Where.** Like a QuPath project, a milkd project lives in a folder of its own, never beside the slide:
slides are referenced, never written to. The default is
``<projects root>/<slide name>-<12 hex digits of the slide's absolute path>.milkd``, where the projects
root is ``$MILKD_PROJECTS`` when set, else the folder the user chose (the widget's *Projects in*
row, remembered in milkd's preferences: :func:`choose_projects_root`), else
``projects/`` in the user data folder (platformdirs: ``~/.local/share/napari-milkd/projects`` on Linux).
Projects made elsewhere are still found and used: in folders chosen before, ``<slide>.milkd/`` beside
the slide (earlier versions), and the same name under the user cache's ``projects/`` (see
:func:`existing_project_dirs`).

**Writes** are atomic (temporary file, then rename), so a crash or a kill never leaves a half-written
file; the previous version survives. **A damaged file** (a truncated ``.npz``, ``project.json`` that is
not JSON) is moved aside as ``<name>.corrupt-<time>`` and reported with :class:`DamagedProjectFile`, so
the caller can start that item clean and say so; nothing is deleted.

**The lock** (:meth:`Project.lock`): ``project.lock`` holds the owner's pid, host and a session token.
A session of another process (on this host or another) gets a one-line :class:`InputError` naming the
holder; the lock of a process that has died on this host is taken over. Within one process a later
session takes the lock from an earlier one (the widget makes a new session at each Prepare), and the
earlier one sees :attr:`ProjectLock.held` turn false and stops saving.

Layout::

    project.json            settings: slide path, µm/px, working resolution, tile size, device, round
    project.lock            who is working on the project now (pid, host, token, since)
    arrays/<name>.npz       label images and probability maps at the working resolution
    checkpoints/            teacher.pt, student.pt (written by the training engine)
    exports/                GeoJSON / ASAP XML / OME-Zarr written from the widget
    rounds/<n>/             each finished round kept before it was replaced (see rounds.py)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.atomic import write_bytes_atomic, write_json_atomic
from napari_milkd.core.errors import InputError, write_error
from napari_milkd.core.preferences import load_preferences, save_preferences

PROJECT_VERSION = 1
#: Environment variable that overrides the folder new projects go to.
PROJECTS_ENV = "MILKD_PROJECTS"
#: Name of the lock file inside a project folder.
LOCK_NAME = "project.lock"
#: How many earlier projects folders are remembered (and searched for a slide's project).
EARLIER_ROOTS_KEPT = 10


def default_projects_root() -> Path:
    """``projects/`` in the user data folder: where projects go unless the user chose otherwise."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-milkd", appauthor=False)) / "projects"


def projects_root() -> Path:
    """Where new projects go: ``$MILKD_PROJECTS``, else the folder the user chose
    (:func:`choose_projects_root`), else :func:`default_projects_root`."""
    env = os.environ.get(PROJECTS_ENV)
    if env:
        return Path(env).expanduser()
    chosen = load_preferences().get("projects_root")
    return Path(chosen) if isinstance(chosen, str) and chosen else default_projects_root()


def earlier_projects_roots() -> list[Path]:
    """Projects folders the user chose before the current one, most recent first."""
    earlier = load_preferences().get("earlier_projects_roots", [])
    return (
        [Path(item) for item in earlier if isinstance(item, str) and item]
        if isinstance(earlier, list)
        else []
    )


def choose_projects_root(folder: str | os.PathLike[str]) -> Path:
    """Make ``folder`` the place new projects go, from now on and in later sessions; the folder used
    until now is remembered, so its projects are still found. The folder is created when missing.

    Returns the folder as an absolute path. Raises :class:`InputError` when it is not a writable
    folder, and :class:`WriteError` when the preference cannot be saved.
    """
    chosen = Path(folder).expanduser().resolve()
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(chosen, exc) from None
    if not os.access(chosen, os.W_OK | os.X_OK):
        raise InputError(f"{chosen} is not a folder milkd can write to: choose another one")
    earlier = [str(root) for root in (projects_root(), *earlier_projects_roots())]
    save_preferences(
        projects_root=str(chosen),
        earlier_projects_roots=list(dict.fromkeys(r for r in earlier if r != str(chosen)))[
            :EARLIER_ROOTS_KEPT
        ],
    )
    return chosen


def project_name(slide_path: str | os.PathLike[str]) -> str:
    """``<slide name>-<12 hex digits of its absolute path>.milkd``: one folder per slide, even for
    slides of the same name in different folders."""
    slide = Path(slide_path).expanduser().resolve()
    key = hashlib.sha1(str(slide).encode()).hexdigest()[:12]
    return f"{slide.name}-{key}.milkd"


def existing_project_dirs(slide_path: str | os.PathLike[str]) -> list[Path]:
    """Projects of ``slide_path`` made elsewhere that exist on disk, most recent first: in the
    projects folders chosen before (:func:`earlier_projects_roots`), then ``<slide>.milkd/`` beside the
    slide and the user cache's ``projects/<name>-<hash>.milkd`` (both made by earlier versions)."""
    from napari_milkd.core.slides.sample import sample_cache_dir

    slide = Path(slide_path).expanduser().resolve()
    name = project_name(slide)
    candidates = [
        *(root / name for root in earlier_projects_roots()),
        slide.parent / f"{slide.name}.milkd",
        sample_cache_dir() / "projects" / name,
    ]
    return [folder for folder in candidates if folder.is_dir()]


def default_project_dir(
    slide_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> Path:
    """The project folder of ``slide_path``: ``<root>/<slide name>-<hash>.milkd`` (``root`` defaults to
    :func:`projects_root`). A project an earlier version made (beside the slide, or in the cache) is
    used instead when there is one and the new folder does not exist yet; nothing is ever created
    beside the slide."""
    new = (
        Path(root).expanduser() / project_name(slide_path)
        if root
        else projects_root() / project_name(slide_path)
    )
    if new.exists():
        return new
    found = existing_project_dirs(slide_path)
    return found[0] if found else new


class DamagedProjectFile(InputError):
    """A project file could not be read as what it should be; it was moved aside (``aside``, or
    ``None`` when even that failed) so that the caller can start that item clean."""

    def __init__(self, message: str, *, path: Path, aside: Path | None) -> None:
        super().__init__(message)
        self.path = path
        self.aside = aside

    def describe(self, what: str) -> str:
        """One line for the user: ``<file> was damaged: kept aside as <file>.corrupt-…, <what>``."""
        if self.aside is not None:
            return f"{self.path.name} was damaged: kept aside as {self.aside.name}, {what}"
        return f"{self.path.name} was damaged and could not be moved aside: {what}"


# --- the lock --------------------------------------------------------------------------------------------

#: Tokens of the locks held by live sessions of this process.
_HELD_TOKENS: set[str] = set()
_HELD_GUARD = threading.Lock()


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (Linux ``/proc``), to tell a reused pid from the lock's owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@dataclass
class ProjectLock:
    """A held project lock; :meth:`release` (or garbage collection of its holder) gives it back."""

    path: Path
    token: str

    @property
    def held(self) -> bool:
        """True while this lock is still ours (not released, not taken by a later session of this
        process)."""
        with _HELD_GUARD:
            return self.token in _HELD_TOKENS

    def release(self) -> None:
        """Remove the lock file if it is still ours; safe to call more than once."""
        with _HELD_GUARD:
            _HELD_TOKENS.discard(self.token)
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def _lock_owner(info: dict[str, Any]) -> str:
    host = info.get("host", "?")
    since = info.get("since")
    when = (
        f" since {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}"
        if isinstance(since, int | float)
        else ""
    )
    return f"process {info.get('pid', '?')} on {host}{when}"


def _lock_is_stale(info: dict[str, Any]) -> bool:
    """True when the lock may be taken: its holder is a dead process on this host or a reused pid, or
    it is this very process (an earlier session of this process; it is told by :attr:`ProjectLock.held`
    and stops saving)."""
    if info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return True
    if not _pid_alive(pid):
        return True
    started = info.get("started")
    return started is not None and _process_start(pid) not in (None, started)


# --- the project -----------------------------------------------------------------------------------------


class Project:
    """A slide's project folder (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def for_slide(
        cls, slide_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
    ) -> Project:
        """The project of ``slide_path`` at its default location (see :func:`default_project_dir`)."""
        return cls(default_project_dir(slide_path, root))

    @property
    def checkpoints(self) -> Path:
        """Folder for training checkpoints."""
        return self.root / "checkpoints"

    @property
    def exports(self) -> Path:
        """Folder for exported annotations."""
        return self.root / "exports"

    # --- damaged files ---

    def set_aside(self, path: Path) -> Path | None:
        """Rename a damaged ``path`` to ``<name>.corrupt-<time>`` beside it; the new path, or ``None``
        when it cannot be renamed (read-only folder)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        try:
            os.rename(path, aside)
        except OSError:
            return None
        return aside

    def _damaged(self, path: Path, reason: object) -> DamagedProjectFile:
        aside = self.set_aside(path)
        where = f"; kept aside as {aside.name}" if aside is not None else ""
        return DamagedProjectFile(f"project file {path} is damaged ({reason}){where}", path=path, aside=aside)

    # --- arrays ---

    def _array_path(self, name: str) -> Path:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise InputError(f"bad array name {name!r}")
        return self.root / "arrays" / f"{name}.npz"

    def save_array(self, name: str, array: np.ndarray, **meta: float | int | str) -> None:
        """Store ``array`` (compressed) with small metadata, atomically."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, data=np.asarray(array), meta=json.dumps(meta))
        write_bytes_atomic(self._array_path(name), buffer.getvalue())

    def load_array(self, name: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """``(array, meta)`` stored under ``name``, or ``None`` when there is none.

        A file that cannot be read is an :class:`InputError`; one that is read but is not a milkd array
        (truncated, garbage, wrong content) is moved aside and reported as :class:`DamagedProjectFile`.
        """
        path = self._array_path(name)
        if not path.exists():
            return None
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read project file {path}: {exc.strerror or exc}") from exc
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                data, meta = np.asarray(npz["data"]), json.loads(str(npz["meta"]))
        except MemoryError:
            raise  # a real array too big for this machine is not a damaged file
        except Exception as exc:  # any other failure to decode the bytes (BadZipFile, zlib, EOF, ...)
            raise self._damaged(path, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(meta, dict) or data.dtype.kind not in "biuf":
            raise self._damaged(path, "not a milkd array")
        return data, meta

    def has_array(self, name: str) -> bool:
        """True when an array ``name`` is stored."""
        return self._array_path(name).exists()

    # --- settings ---

    def save_settings(self, settings: dict[str, Any]) -> None:
        """Write ``project.json`` atomically (merged over what is there; a damaged file is set aside)."""
        try:
            previous = self.load_settings()
        except DamagedProjectFile:
            previous = {}
        write_json_atomic(self.root / "project.json", {**previous, **settings, "version": PROJECT_VERSION})

    def load_settings(self) -> dict[str, Any]:
        """``project.json`` as a dict (empty when absent); a damaged one is set aside and reported as
        :class:`DamagedProjectFile`."""
        path = self.root / "project.json"
        if not path.exists():
            return {}
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read project file {path}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as exc:  # also UnicodeDecodeError
            raise self._damaged(path, exc) from exc
        if not isinstance(data, dict):
            raise self._damaged(path, "not a settings object")
        return data

    # --- lock ---

    @property
    def lock_path(self) -> Path:
        """The lock file."""
        return self.root / LOCK_NAME

    def lock_holder(self) -> dict[str, Any] | None:
        """What the lock file says (``pid``, ``host``, ``token``, ``since``), or None when unlocked."""
        try:
            info = json.loads(self.lock_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def lock(self, holder: object | None = None) -> ProjectLock:
        """Take the project's lock; raise a one-line :class:`InputError` naming the holder when a live
        process other than this one has it. The lock of a dead process on this host, or of an earlier
        session of this process (whose :attr:`ProjectLock.held` turns false), is taken over. With
        ``holder``, the lock is also released when that object is garbage-collected."""
        token = uuid.uuid4().hex
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": os.environ.get("USER") or os.environ.get("USERNAME") or "",
            "token": token,
            "since": time.time(),
            "started": _process_start(os.getpid()),
        }
        payload = (json.dumps(info) + "\n").encode()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.root, exc) from exc
        # The lock appears whole or not at all: written to a hidden file, then hard-linked into place
        # (a link fails when the name exists, like O_EXCL, and no reader ever sees a half-written lock).
        pending = self.root / f".{LOCK_NAME}.{token}"
        try:
            pending.write_bytes(payload)
        except OSError as exc:
            raise write_error(self.lock_path, exc) from exc
        try:
            for _attempt in range(5):
                try:
                    os.link(pending, self.lock_path)
                except FileExistsError:
                    held = self.lock_holder()
                    if held is None:
                        continue  # released meanwhile: try again
                    if held and not _lock_is_stale(held):
                        raise InputError(
                            f"project {self.root} is in use by {_lock_owner(held)}: close it there first"
                        ) from None
                    with _HELD_GUARD:
                        _HELD_TOKENS.discard(held.get("token"))  # an earlier session of this process
                    self._take_over(held)
                    continue
                except OSError as exc:
                    raise write_error(self.lock_path, exc) from exc
                with _HELD_GUARD:
                    _HELD_TOKENS.add(token)
                lock = ProjectLock(self.lock_path, token)
                if holder is not None:
                    weakref.finalize(holder, lock.release)
                return lock
        finally:
            with contextlib.suppress(OSError):
                pending.unlink()
        raise InputError(
            f"project {self.root} is being opened by another session at the same time; try again"
        )

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Move a stale lock away; if what was moved is no longer that stale lock (another session took
        it over first), put it back."""
        moved = self.lock_path.with_name(f".{LOCK_NAME}.{uuid.uuid4().hex}")
        try:
            os.rename(self.lock_path, moved)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise write_error(self.lock_path, exc) from exc
        try:
            now = json.loads(moved.read_text())
        except (OSError, ValueError):
            now = {}
        if stale and isinstance(now, dict) and now.get("token") != stale.get("token"):
            with contextlib.suppress(OSError):
                os.link(moved, self.lock_path)
        with contextlib.suppress(OSError):
            moved.unlink()


__all__ = [
    "LOCK_NAME",
    "PROJECTS_ENV",
    "PROJECT_VERSION",
    "DamagedProjectFile",
    "Project",
    "ProjectLock",
    "default_project_dir",
    "existing_project_dirs",
    "project_name",
    "projects_root",
]
