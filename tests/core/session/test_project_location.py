"""Where a project lives (issue 17): in the user's projects folder, never beside the slide; projects an
earlier version made beside the slide or in the cache are still found."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from napari_milkd.core.errors import InputError, WriteError
from napari_milkd.core.preferences import preferences_path
from napari_milkd.core.session.project import (
    PROJECTS_ENV,
    Project,
    choose_projects_root,
    default_project_dir,
    earlier_projects_roots,
    existing_project_dirs,
    projects_root,
)
from napari_milkd.core.session.slide_session import SlideSession
from napari_milkd.core.slides.sample import sample_cache_dir
from slide_images import tissue_square_slide


def _key(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


def test_preparing_a_session_writes_nothing_beside_the_slide(tmp_path: Path) -> None:
    """Regression: in a writable folder the project went to ``<slide>.milkd/`` beside the slide."""
    folder = tmp_path / "scanner-share"
    slide = tissue_square_slide(folder / "case 1.tiff")
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
    slide = tissue_square_slide(tmp_path / "s.tiff")
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
    slide = tissue_square_slide(folder / "s.tiff")
    folder.chmod(0o555)
    try:
        with SlideSession(slide) as session:
            session.prepare(1.0, 64)
            session.save()
        assert os.listdir(folder) == ["s.tiff"]
    finally:
        folder.chmod(0o755)


def test_a_chosen_projects_folder_is_remembered_and_earlier_projects_are_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PROJECTS_ENV)
    monkeypatch.setenv("MILKD_CONFIG_DIR", str(tmp_path / "config"))
    first, second = tmp_path / "first", tmp_path / "second"
    assert choose_projects_root(first) == first.resolve() and first.is_dir()
    assert projects_root() == first.resolve()
    slide = tissue_square_slide(tmp_path / "slides" / "s.tiff")
    with SlideSession(slide) as session:
        session.prepare(1.0, 64)
        session.save()
        made = session.project.root
    assert made.parent == first.resolve()

    choose_projects_root(second)
    assert projects_root() == second.resolve()
    assert earlier_projects_roots()[0] == first.resolve()
    # the project made in the first folder is still the slide's project
    assert Project.for_slide(slide).root == made
    assert [p.name for p in (tmp_path / "slides").iterdir()] == ["s.tiff"]


def test_choosing_a_projects_folder_refuses_a_file_and_survives_damaged_preferences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PROJECTS_ENV)
    monkeypatch.setenv("MILKD_CONFIG_DIR", str(tmp_path / "config"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises((InputError, WriteError)) as caught:
        choose_projects_root(a_file / "projects")
    assert "\n" not in str(caught.value)
    preferences_path().parent.mkdir(parents=True)
    preferences_path().write_text("{not json")
    from platformdirs import user_data_dir

    assert projects_root() == Path(user_data_dir("napari-milkd", appauthor=False)) / "projects"
    assert earlier_projects_roots() == []
    assert choose_projects_root(tmp_path / "ok") == (tmp_path / "ok").resolve()
