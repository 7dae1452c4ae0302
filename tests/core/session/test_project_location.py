"""Where a project lives (issue 17): in the user's projects folder, never beside the slide; projects an
earlier version made beside the slide or in the cache are still found."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from napari_milkd.core.session.project import (
    PROJECTS_ENV,
    Project,
    default_project_dir,
    existing_project_dirs,
    projects_root,
)
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.slides.sample import sample_cache_dir, write_pyramidal_tiff


def small_slide(path: Path) -> Path:
    """A 384×512 single-level tiled TIFF at 0.5 µm/px: a pink square on white glass."""
    image = np.full((384, 512, 3), 245, np.uint8)
    image[64:320, 96:416] = (220, 120, 180)
    write_pyramidal_tiff(path, [image], mpp=0.5, tile=128)
    return path


def _key(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


def test_preparing_a_session_writes_nothing_beside_the_slide(tmp_path: Path) -> None:
    """Regression: in a writable folder the project went to ``<slide>.milkd/`` beside the slide."""
    folder = tmp_path / "scanner-share"
    slide = small_slide(folder / "case 1.tiff")
    before = sorted(p.name for p in folder.iterdir())
    with SlideSession(slide) as session:
        session.prepare(1.0, 64)
        session.weak[:] = 2
        session.save()
        assert session.project.root.parent == projects_root()
        assert session.project.root.name == f"case 1.tiff-{_key(slide)}.milkd"
        assert (session.project.root / "arrays" / "weak_labels.npz").is_file()
    assert sorted(p.name for p in folder.iterdir()) == before == ["case 1.tiff"]


def test_projects_root_follows_the_environment_and_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROJECTS_ENV, "~/milkd-projects")
    assert projects_root() == Path("~/milkd-projects").expanduser()
    monkeypatch.delenv(PROJECTS_ENV)
    from platformdirs import user_data_dir

    assert projects_root() == Path(user_data_dir("napari-milkd", appauthor=False)) / "projects"


def test_slides_of_the_same_name_get_their_own_projects(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "s.svs", tmp_path / "b" / "s.svs"
    assert default_project_dir(a) != default_project_dir(b)
    assert default_project_dir(a).name.startswith("s.svs-")
    # an explicit root, as callers of Project.for_slide may give
    assert Project.for_slide(a, root=tmp_path / "mine").root == tmp_path / "mine" / f"s.svs-{_key(a)}.milkd"


def test_projects_of_earlier_versions_are_still_found(tmp_path: Path) -> None:
    slide = tmp_path / "old.svs"
    slide.write_bytes(b"x")
    assert existing_project_dirs(slide) == []
    cached = sample_cache_dir() / "projects" / f"old.svs-{_key(slide)}.milkd"  # read-only-folder fallback
    cached.mkdir(parents=True)
    assert default_project_dir(slide) == cached
    beside = tmp_path / "old.svs.milkd"  # the old default beside the slide
    beside.mkdir()
    assert existing_project_dirs(slide) == [beside, cached]
    assert Project.for_slide(slide).root == beside
    # a project in the new place wins once it exists
    new = projects_root() / f"old.svs-{_key(slide)}.milkd"
    new.mkdir(parents=True)
    assert default_project_dir(slide) == new


def test_an_old_project_beside_the_slide_is_restored(tmp_path: Path) -> None:
    slide = small_slide(tmp_path / "s.tiff")
    old = Project(tmp_path / "s.tiff.milkd")
    with SlideSession(slide, project=old) as first:
        first.prepare(1.0, 64)
        first.weak[10:20, 10:20] = 1
        first.save()
    with SlideSession(slide) as again:
        assert again.project.root == old.root
        assert "weak labels" in again.prepare(1.0, 64)
        assert (again.weak == 1).sum() == 100


def test_nothing_is_written_into_a_read_only_slide_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    slide = small_slide(folder / "s.tiff")
    folder.chmod(0o555)
    try:
        with SlideSession(slide) as session:
            session.prepare(1.0, 64)
            session.save()
        assert os.listdir(folder) == ["s.tiff"]
    finally:
        folder.chmod(0o755)
