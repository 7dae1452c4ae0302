"""A `milkd train --slides` manifest opened in the dock as a slide group: a bad manifest is one error
notification and opens nothing; a two-slide manifest (QuPath regions on one slide, the other labelled
tumour-free as a whole and given its µm/px by the manifest) fills the slide list, each slide with the weak
labels and bags the headless trainer makes of its row; "Train on all prepared slides" trains on both; the
group's own manifest opens back as the same group. Tiny backbone, CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from napari.utils.notifications import notification_manager
from settle import settle

from napari_milkd._widget import SlideWidget
from napari_milkd._widget.slide_layers import info_from_layer, slide_layers
from napari_milkd.core.progress import drain
from napari_milkd.core.session.cohort_manifest import read_training_manifest
from napari_milkd.core.session.cohort_training import cohort_bags
from napari_milkd.core.session.slide_group import MANIFEST_NAME, group_folder
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from slide_images import TWO_TONE_SHAPE, TWO_TONE_SPLIT, two_tone_slide

WORK_MPP, TILE = 1.0, 32
PLAIN_MPP = 0.5  # the manifest's µm/px for the slide whose file records none


def _regions(path: Path) -> Path:
    """QuPath rectangles: "Tumor" over the purple half, "Stroma" over the pink half."""
    (h, w), split = TWO_TONE_SHAPE, TWO_TONE_SPLIT

    def feature(x0: int, x1: int, name: str) -> dict:
        ring = [[x0, 40], [x1, 40], [x1, h - 40], [x0, h - 40], [x0, 40]]
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name}},
        }

    features = [feature(40, split - 8, "Tumor"), feature(split + 8, w - 40, "Stroma")]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _messages(before: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[before:]]


def _rows(widget: SlideWidget) -> list[str]:
    rows = widget.slide_list.list
    return [rows.item(i).text() for i in range(rows.count())]


def _wait_layers(qtbot, viewer, widget: SlideWidget, names: list[str], timeout: int = 120_000) -> None:
    qtbot.waitUntil(lambda: not widget.busy and all(n in viewer.layers for n in names), timeout=timeout)


def test_manifest_opens_as_a_group_trains_and_opens_back(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    data = tmp_path / "cohort"
    two_tone_slide(data / "halves.tiff", 0)
    two_tone_slide(data / "plain.tif", 1, mpp=None)
    _regions(data / "halves.geojson")
    manifest = data / "train.csv"
    manifest.write_text(
        "slide,annotations,label,mpp,split\n"
        "halves.tiff,halves.geojson,,,train\n"
        f"plain.tif,,negative,{PLAIN_MPP},val\n"
    )
    bad = data / "bad.csv"
    bad.write_text("slide,annotations\nhalves.tiff,missing.geojson\n")

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 950)
    _, widget = viewer.window.add_plugin_dock_widget("napari-milkd", "Slide masks")
    widget.training.backbone_combo.setCurrentText("tiny")
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))
    widget.training.teacher_epochs.value = 1
    widget.target_spin.setValue(WORK_MPP)
    widget.tile_spin.setValue(TILE)
    widget.projects_root = tmp_path / "projects"  # its own: other tests' groups stay out of it
    assert widget.slide_list.open_manifest.isEnabled()

    # A bad manifest: one error notification naming the problem; nothing opened.
    before = len(notification_manager.records)
    widget.open_manifest(bad)
    errors = [m for m in _messages(before) if "cannot open the manifest bad.csv" in m]
    assert len(errors) == 1 and "line 2: annotations not found" in errors[0]
    assert slide_layers(viewer) == [] and not widget.busy

    # The two-slide manifest: both slides opened, prepared and labelled in a worker, then listed.
    before = len(notification_manager.records)
    widget.open_manifest(manifest)
    assert widget.busy  # the slides are prepared off the GUI thread
    _wait_layers(qtbot, viewer, widget, ["halves weak labels", "plain weak labels"])
    settle(qtbot, widget)
    assert [layer.name for layer in slide_layers(viewer)] == ["halves", "plain"]
    plain_layer = info_from_layer(viewer.layers["plain"])
    assert plain_layer.mpp == PLAIN_MPP and plain_layer.mpp_source == "user"  # the manifest's µm/px
    sessions = {Path(path).name: entry for path, entry in widget.sessions().items()}
    assert set(sessions) == {"halves.tiff", "plain.tif"}
    halves, plain = sessions["halves.tiff"][1], sessions["plain.tif"][1]
    assert plain.info.mpp == PLAIN_MPP
    assert all(s.project.root.parent == widget.projects_root for s in (halves, plain))  # the dock's folder
    # Each slide's weak labels: the headless trainer's bags from its own code path, the regions where
    # they were drawn, the layer showing the session's map.
    per_slide = drain(cohort_bags(read_training_manifest(manifest), work_mpp=WORK_MPP, tile=TILE))
    for session, given in zip((halves, plain), per_slide, strict=True):
        assert session.bags == (given.n_positive, given.n_negative)
        assert session.bag_rule.name == "regions"
    assert halves.bags[0] > 0 and halves.bags[1] > 0 and plain.bags[0] == 0 and plain.bags[1] > 0
    w = halves.work.shape[1]
    assert (halves.weak[:, : w // 2 - 8] == REGION_TUMOUR).any()
    assert not (halves.weak[:, w // 2 + 8 :] == REGION_TUMOUR).any()
    assert (plain.weak[plain.tissue] == REGION_FREE).all()
    assert viewer.layers["halves weak labels"].data is halves.weak
    assert np.array_equal(viewer.layers["plain weak labels"].data, plain.weak)
    rows = _rows(widget)
    assert [r.split(" — ")[0] for r in rows] == ["halves", "plain"]
    assert rows[0].endswith(f"prepared · {halves.bags[0]} positive / {halves.bags[1]} negative bags")
    assert rows[1].endswith(f"prepared · 0 positive / {plain.bags[1]} negative bags")
    assert any("opened 2 slides of train.csv as a group" in m for m in _messages(before))
    assert widget.bag_rule_combo.currentData() == "regions"

    # Train teacher on both: one model, both slides' bags, a mask on each.
    assert widget.slide_list.train_all.isEnabled()
    assert widget.session is plain and not widget.train_teacher_button.isEnabled()  # no positive bag here
    widget.slide_list.train_all.setChecked(True)
    assert widget.train_teacher_button.isEnabled()  # ... but over both slides there are both kinds
    widget.train_teacher_button.click()
    _wait_layers(qtbot, viewer, widget, ["halves teacher mask", "plain teacher mask"], timeout=240_000)
    assert "teacher done on 2 slides" in widget.training.status.text()
    assert all(s.mask("teacher") is not None for _, s in widget.sessions().values())
    group = group_folder([halves.slide_path, plain.slide_path], widget.projects_root)
    assert list((widget.projects_root / "groups").glob("*.milkd")) == [group]
    group_manifest = group / MANIFEST_NAME
    with group_manifest.open() as fh:
        exported = list(csv.DictReader(fh))
    assert sorted(Path(r["slide"]).name for r in exported) == ["halves.tiff", "plain.tif"]
    assert next(r for r in exported if r["slide"].endswith("plain.tif"))["mpp"] == f"{PLAIN_MPP:g}"

    # Round trip: the group's own manifest opens back as the same group (its GeoJSONs re-read and
    # rasterised give each slide's weak labels exactly; the same sessions, layers and rows).
    weak_before = {name: s.weak.copy() for name, (_, s) in sessions.items()}
    rows_before = _rows(widget)
    before = len(notification_manager.records)
    widget.open_manifest(group_manifest)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    settle(qtbot, widget)
    messages = _messages(before)
    assert any("opened 2 slides of manifest.csv as a group" in m for m in messages)
    assert not any("replaced" in m or "cannot open" in m for m in messages), messages
    assert [layer.name for layer in slide_layers(viewer)] == ["halves", "plain"]
    again = {Path(path).name: entry for path, entry in widget.sessions().items()}
    assert {name: s for name, (_, s) in again.items()} == {"halves.tiff": halves, "plain.tif": plain}
    for name, (_, session) in again.items():
        assert np.array_equal(session.weak, weak_before[name])
    assert _rows(widget) == rows_before

    # Slides prepared at other settings than the dock's now: refused before anything changes.
    widget.tile_spin.setValue(2 * TILE)
    before = len(notification_manager.records)
    widget.open_manifest(group_manifest)
    errors = [m for m in _messages(before) if "cannot open the manifest manifest.csv" in m]
    assert len(errors) == 1 and "prepared at 1 µm/px with 32 px tiles" in errors[0]
    assert not widget.busy and _rows(widget) == rows_before
    qtbot.wait(50)  # the dock scrolls to its weak-labels section at the next turn of the event loop
    viewer.close()
