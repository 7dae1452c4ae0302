"""A newcomer's first hour (issue #17): the menu paths the docs and the widget quote exist in the running
napari, greyed buttons say why, and the sample says it is synthetic (and that it is being generated).

Data fixtures that may skip come before ``make_napari_viewer`` in each signature.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from settle import settle

from napari_milkd import _sample_data
from napari_milkd._sample_data import SAMPLE_LAYER_NAME
from napari_milkd._widget import SlideWidget, slide_form, slide_widget
from napari_milkd._widget.slide_buttons import SlideState, button_reasons
from napari_milkd.core.engine.config import TrainResult
from napari_milkd.core.session.jobs import StageOutput
from napari_milkd.core.slides.geometry import tissue_map
from napari_milkd.core.slides.sample import GENERATION_STEPS, coarse_regions
from slide_images import tissue_square_slide

ROOT = Path(__file__).resolve().parents[2]
#: Every document that quotes a menu path; each path is written in bold: **File ▸ Open Sample ▸ …**.
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
MENU_PATH = re.compile(r"\*\*((?:File|View|Layers|Plugins|Window|Help)(?: ▸ [^*▸\n]+)+)\*\*")


def _clean(text: str) -> str:
    """A Qt menu text as a reader sees it: no mnemonic ``&``, ``&&`` as ``&``, ``...`` as ``…``."""
    return re.sub(r"&(.)", r"\1", text).replace("...", "…").strip()


def _menu_paths(viewer) -> set[tuple[str, ...]]:
    """Every path through the running napari's menu bar, as the user sees it."""
    found: set[tuple[str, ...]] = set()

    def walk(menu, path: tuple[str, ...]) -> None:
        menu.aboutToShow.emit()  # app-model menus fill or update themselves as they open
        for action in menu.actions():
            if action.isSeparator() or not action.isVisible():
                continue
            here = (*path, _clean(action.text()))
            found.add(here)
            if action.menu() is not None:
                walk(action.menu(), here)

    for top in viewer.window._qt_window.menuBar().actions():
        top_path = (_clean(top.text()),)
        found.add(top_path)
        walk(top.menu(), top_path)
    return found


def _quoted_paths() -> dict[tuple[str, ...], str]:
    """Every menu path the docs quote (in bold), with the file that quotes it; every ▸ is in one."""
    quoted: dict[tuple[str, ...], str] = {}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        paths = MENU_PATH.findall(text)
        arrows = sum(path.count("▸") for path in paths)
        assert arrows == text.count("▸"), (
            f"{doc.name}: write each menu path in bold, like **File ▸ Open Sample**"
        )
        for path in paths:
            quoted[tuple(part.strip() for part in path.split("▸"))] = doc.name
    return quoted


def test_menu_paths_in_the_docs_and_hints_exist_in_napari(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    paths = _menu_paths(viewer)
    quoted = _quoted_paths()
    assert ("File", "Open Sample", "Synthetic H&E slide with a tumour (milkd)") in quoted
    assert ("Plugins", "milkd", "Slide masks") in quoted and (
        "Plugins",
        "milkd",
        "Image-folder masks",
    ) in quoted
    missing = {" ▸ ".join(path): doc for path, doc in quoted.items() if path not in paths}
    assert not missing, f"menu paths quoted but not in napari: {missing}"
    # The hint the slide widget shows before a slide is open.
    for path in (slide_form.OPEN_MENU, slide_form.SAMPLE_MENU):
        assert path in paths, path
        assert " ▸ ".join(path) in slide_form.NO_SLIDE


def test_sample_is_named_synthetic_and_says_it_is_being_generated(
    make_napari_viewer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first Open Sample generates the slide: a notification says so, a progress bar follows each
    step (generation itself is replaced by the cached slide here, with the same steps reported)."""
    steps: list[str] = []
    real = _sample_data.ensure_sample_slide

    def generating(cache_dir=None, on_step=None):
        for step in GENERATION_STEPS:
            steps.append(step)
            if on_step is not None:
                on_step(step)
        return real(cache_dir)

    monkeypatch.setattr(_sample_data, "sample_slide_exists", lambda *_: False)
    monkeypatch.setattr(_sample_data, "ensure_sample_slide", generating)
    viewer = make_napari_viewer()
    before = len(notification_manager.records)
    viewer.open_sample("napari-milkd", "sample_slide")
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("generating the synthetic sample slide" in m for m in messages), messages
    assert steps[: len(GENERATION_STEPS)] == list(GENERATION_STEPS)
    assert "synthetic" in SAMPLE_LAYER_NAME and SAMPLE_LAYER_NAME in viewer.layers


def test_button_reasons_are_short() -> None:
    """Every reason a button gives fits in a toast (napari elides a notification to one line)."""
    states = [
        SlideState(),
        SlideState(has_slide=True),
        SlideState(has_slide=True, has_mpp=True, prepared=True, busy=True),
        SlideState(has_slide=True, has_mpp=True, prepared=True, models=frozenset({"student"})),
        SlideState(has_slide=True, has_mpp=True, prepared=True, positive=1, negative=1),
    ]
    for state in states:
        for name, reason in button_reasons(state).items():
            assert reason is None or len(reason) <= 60, (name, reason)


def test_greyed_buttons_say_why(
    tcga_svs: Path, make_napari_viewer, qtbot, fresh_project: Path, monkeypatch
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert isinstance(widget, SlideWidget)
    assert not widget.prepare_button.isEnabled()
    assert "open a slide first" in widget.prepare_button.toolTip()

    # A slide that does not say its µm/px: Prepare is sure to fail until it is entered.
    viewer.open(str(tcga_svs), plugin="napari-milkd")
    assert not widget.prepare_button.isEnabled()
    assert "µm/px" in widget.prepare_button.toolTip()
    widget.mpp_apply.click()
    assert widget.prepare_button.isEnabled() and "Disabled" not in widget.prepare_button.toolTip()
    viewer.layers.clear()

    viewer.open_sample("napari-milkd", "sample_slide")
    for button in (widget.train_teacher_button, widget.paint_tumour, widget.export_button):
        assert not button.isEnabled() and "prepare the slide first" in button.toolTip()
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and widget.training.worker is None, timeout=60_000)
    assert widget.paint_tumour.isEnabled()
    assert "paint or import both positive and negative regions first" in widget.train_teacher_button.toolTip()
    assert "train the teacher first" in widget.train_student_button.toolTip()
    assert "no student mask to export yet" in widget.export_button.toolTip()

    work = widget.session.work
    viewer.layers[f"{SAMPLE_LAYER_NAME} weak labels"].data = coarse_regions(
        work.downsample, work.shape, tissue_map(work)
    )
    assert widget.train_teacher_button.isEnabled()
    assert "train the teacher first" in widget.train_student_button.toolTip()

    # A teacher map (as a finished job hands it over): export switches to it and is enabled.
    result = TrainResult(stage="teacher", epochs=1, best_epoch=1, best_score=None, checkpoint=None)
    widget.session.accept(StageOutput("teacher", np.full(work.shape, 0.9, np.float32), result, 1, 1))
    widget.show_stage("teacher")
    assert widget.export_stage.currentText() == "teacher" and widget.export_button.isEnabled()
    widget.export_stage.setCurrentText("student")
    assert "no student mask to export yet" in widget.export_button.toolTip()
    widget.export_stage.setCurrentText("teacher")

    # The teacher's layer deleted: its mask is still the session's, and export says where it came from.
    del viewer.layers[f"{SAMPLE_LAYER_NAME} teacher mask"]
    assert widget.export_button.isEnabled()
    target = fresh_project / "out.geojson"
    monkeypatch.setattr(slide_widget.QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    before = len(notification_manager.records)
    widget.export_button.click()
    settle(qtbot, widget)
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert target.exists()
    assert any("wrote out.geojson (its mask layer was deleted)" in m for m in messages), messages
    assert not any("no teacher mask" in m for m in messages), messages


def test_projects_go_where_the_user_chooses_never_beside_the_slide(
    make_napari_viewer, qtbot, tmp_path: Path, monkeypatch
) -> None:
    """The dock shows where projects go and can change it; a slide in a writable folder gets nothing
    written beside it; the chosen folder is remembered for the next widget."""
    monkeypatch.delenv("MILKD_PROJECTS")  # when set, it wins at start-up (scripted use)
    monkeypatch.setenv("MILKD_CONFIG_DIR", str(tmp_path / "config"))
    share = tmp_path / "scanner-share"
    slide = tissue_square_slide(share / "case 7.tiff")
    chosen = tmp_path / "my projects"
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    assert widget.projects_note.toolTip().startswith("New projects")
    assert "never written to" in widget.projects_button.toolTip()

    monkeypatch.setattr(slide_form.QFileDialog, "getExistingDirectory", lambda *a, **k: str(chosen))
    widget.projects_button.click()
    assert widget.projects_root == chosen.resolve() and chosen.is_dir()
    assert "my projects" in widget.projects_note.text()
    assert str(chosen.resolve()) in widget.projects_note.toolTip()

    viewer.open(str(slide), plugin="napari-milkd")
    widget.prepare_button.click()
    qtbot.waitUntil(lambda: widget.session is not None and widget.training.worker is None, timeout=60_000)
    assert widget.session.project.root.parent == chosen.resolve()
    assert str(widget.session.project.root) in widget.result_note.toolTip()
    widget.session.save()
    assert sorted(p.name for p in share.iterdir()) == ["case 7.tiff"]

    # A second dock (napari restarted) starts from the chosen folder.
    second = SlideWidget(viewer)
    assert second.projects_root == chosen.resolve()
    second.close()
