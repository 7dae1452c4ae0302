"""Several slides in one dock: the slide list of section 1, the sessions of slides prepared earlier, and
"Train on all prepared slides".

:class:`SlideList` is the face: one row per slide layer of the viewer with its state ("prepared · 12
positive / 30 negative bags", "not prepared") and the check box. :class:`SlideGroupPart` is mixed into
:class:`~napari_milkd._widget.slide_widget.SlideWidget`: it keeps the session of every slide prepared
before (saved when left, its project's lock held) while another slide is chosen, makes the chosen slide's
session the widget's (``widget.session``, its layers, its bag counts; a slide not prepared yet has
none), runs "Train teacher" / "Distil student" on all prepared slides with labels when the box is
ticked (:func:`~napari_milkd.core.session.slide_group.group_train_job`: one model, every slide's map),
and shows each slide's new masks on that slide's layers (``"<slide> teacher mask"``), reviewed slide by
slide by choosing the slide in the list. Closing the widget gives every project's lock back.

*Open manifest…* opens a ``milkd train --slides`` manifest (a group's own ``manifest.csv`` too) as a
group: every slide not open yet is opened with milkd's reader (given the manifest's µm/px where the file
has none), then a worker prepares each at the dock's working resolution and tile size and makes its
weak labels what the headless trainer makes of its row
(:func:`~napari_milkd.core.session.slide_group.open_manifest_slides`); each slide's layers are then put
in steps, as after *Prepare slide*. A slide already prepared in the dock keeps its session and only gets
the manifest's labels. A manifest that cannot be read is one error notification and opens nothing; a
slide failing while it is prepared stops the job with one (the slide layers opened stay, unprepared).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_milkd._layers import MICROMETRES, SLIDE_META
from napari_milkd._widget.qt_helpers import error_text, notify_error, notify_info, notify_warning
from napari_milkd._widget.slide_layers import info_from_layer, slide_layers
from napari_milkd._widget.slide_open import PLUGIN
from napari_milkd.core.errors import InputError, MilkdError
from napari_milkd.core.session.slide_group import (
    GroupOutput,
    ManifestSlide,
    OpenedSlide,
    check_held_session,
    group_train_job,
    open_manifest_slides,
    read_manifest_group,
    take_manifest_labels,
)
from napari_milkd.core.session.weak_labels import REGIONS_RULE

if TYPE_CHECKING:
    from napari_milkd._widget.background import Background, Steps
    from napari_milkd._widget.slide_buttons import SlideState
    from napari_milkd.core.session.slide_session import AcceptedMap, SlideSession

TRAIN_ALL = "Train on all prepared slides"
NEEDS_TWO = "prepare two or more slides and label them (both kinds of bag over all of them) first"
OPEN_MANIFEST = "Open manifest…"
MANIFEST_FILTER = "Slide manifests (*.csv);;All files (*)"
MANIFEST_MPP_HINT = "give its level-0 µm/px in the manifest's mpp column"


def slide_state(session: SlideSession | None) -> str:
    """A slide's state in words, for the list."""
    if session is None or session.work is None:
        return "not prepared"
    positive, negative = session.bags
    models = [stage for stage in ("teacher", "student") if session.mask(stage) is not None]
    return f"prepared · {positive} positive / {negative} negative bags" + (
        f" · {', '.join(models)}" if models else ""
    )


def give_layer_mpp(layer: Any, mpp: float) -> None:
    """A µm/px the slide file lacks, given by the user (or a manifest's ``mpp`` column): the slide layer
    gets it (facts, scale, units), marked as the user's."""
    facts = dict(layer.metadata[SLIDE_META])
    facts.update(mpp_x=mpp, mpp_y=mpp, mpp_source="user", mpp_known=True)
    layer.metadata = {**layer.metadata, SLIDE_META: facts}
    layer.scale = (mpp, mpp)
    layer.units = MICROMETRES


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _close_all(kept: dict[str, tuple[str, SlideSession]]) -> None:
    """Save and close every kept session (the widget is going; nothing here may raise)."""
    for _, session in list(kept.values()):
        with contextlib.suppress(MilkdError, OSError):
            session.save()
        session.close()
    kept.clear()


class SlideList(QWidget):
    """The slides open in the viewer, each with its state, and the "Train on all prepared slides" box."""

    def __init__(self) -> None:
        super().__init__()
        self.list = QListWidget()
        self.list.setToolTip("Slides open in the viewer; choose one to work on (its weak labels and masks)")
        self.list.setMaximumHeight(96)
        self.train_all = QCheckBox(TRAIN_ALL)
        self.train_all.setEnabled(False)
        self.train_all.setToolTip(NEEDS_TWO)
        self.open_manifest = QPushButton(OPEN_MANIFEST)
        self.open_manifest.setToolTip(
            "Open the slides of a 'milkd train --slides' manifest (or a slide group's manifest.csv) with "
            "their annotations as weak labels, prepared at the working resolution and tile size below"
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        row = QHBoxLayout()
        row.addWidget(self.train_all)
        row.addStretch(1)
        row.addWidget(self.open_manifest)
        layout.addLayout(row)

    def show_rows(self, rows: list[tuple[str, str]], current: str | None, *, group_ready: bool) -> None:
        """Show ``rows`` (layer name, state) with ``current`` chosen; the box is enabled when
        ``group_ready`` (its tooltip says why not otherwise)."""
        self.list.blockSignals(True)
        if [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())] != [
            name for name, _ in rows
        ]:
            self.list.clear()
            for name, _ in rows:
                item = QListWidgetItem(name)
                item.setData(Qt.ItemDataRole.UserRole, name)
                self.list.addItem(item)
        for i, (name, state) in enumerate(rows):
            item = self.list.item(i)
            item.setText(f"{name} — {state}")
            if name == current:
                self.list.setCurrentRow(i)
        self.list.blockSignals(False)
        self.train_all.setEnabled(group_ready)
        self.train_all.setToolTip(
            "Train teacher / Distil student train one model on every prepared slide with labels, then "
            "predict each slide"
            if group_ready
            else NEEDS_TWO
        )

    def chosen(self) -> str | None:
        """The layer name of the chosen row."""
        item = self.list.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    @property
    def group_ticked(self) -> bool:
        """True when the box is ticked and may be."""
        return self.train_all.isEnabled() and self.train_all.isChecked()


class SlideGroupPart:
    """The several-slides part of the slide widget (see the module docstring)."""

    if TYPE_CHECKING:  # provided by SlideWidget / SlideForm
        viewer: Any
        session: SlideSession | None
        slide_list: SlideList
        layers: Any
        training: Any
        layer_combo: Any
        result_note: Any
        review_note: Any
        projects_root: Path
        _session_holder: list[SlideSession | None]
        busy: bool

        destroyed: Any

        target_spin: Any
        tile_spin: Any
        bag_rule_combo: Any
        _planned: tuple[str, SlideSession] | None
        jobs: Background

        def selected_layer(self) -> Any: ...
        def _adopt_steps(self, prepared: Any) -> Steps: ...
        def _save_now(self) -> None: ...
        def _flush_edits(self) -> None: ...
        def _update_bag_note(self) -> None: ...
        def _update_buttons(self) -> None: ...
        def _refuse_when_busy(self) -> bool: ...
        def show_stage(self, stage: str) -> None: ...
        def collect_corrections(self) -> None: ...
        def _drop_preview(self, *_: object) -> None: ...
        def _run_job(self, job: Any, text: str, done: Any = None) -> None: ...

    def _init_slide_group(self) -> None:
        #: Sessions of slides prepared before and not chosen now: slide path → (layer name, session).
        self._kept: dict[str, tuple[str, SlideSession]] = {}
        self._switch_timer = QTimer(self, singleShot=True, interval=0)  # type: ignore[call-overload]
        self._switch_timer.timeout.connect(self._switch_to_selected)
        self.slide_list.list.currentRowChanged.connect(self._row_chosen)
        self.slide_list.open_manifest.clicked.connect(self._open_manifest_dialog)
        # Ticking the box changes what Train teacher / Distil student need (bags over all slides).
        self.slide_list.train_all.toggled.connect(self._group_box_toggled)
        self.layer_combo.currentIndexChanged.connect(self._switch_to_selected)
        # Closing the viewer destroys the widget: every kept session saves and gives its lock back too.
        self.destroyed.connect(lambda *_, kept=self._kept: _close_all(kept))

    def enable(self, state: SlideState) -> None:
        """Show every slide's state in the list, and enable the buttons (the form's; with "Train on all
        prepared slides" ticked, training needs both kinds of bag over all slides, not on this one).
        Called whenever what may be pressed changes: a job starts or ends, bags are counted, a slide is
        chosen."""
        self.refresh_slide_list()
        if getattr(self, "_kept", None) is not None and self.slide_list.group_ticked:
            state = replace(state, positive=max(state.positive, 1), negative=max(state.negative, 1))
        super().enable(state)  # type: ignore[misc]

    def sessions(self) -> dict[str, tuple[str, SlideSession]]:
        """Every prepared slide's session, the chosen one included: slide path → (layer name, session)."""
        out = dict(getattr(self, "_kept", {}))
        session, name = self.session, self.layers.slide_name
        if session is not None and session.work is not None and name is not None:
            out[session.slide_path] = (name, session)
        return out

    def refresh_slide_list(self, *_: object) -> None:
        """Show each slide layer with its state; enable the box when a group can be trained."""
        if not hasattr(self, "_kept"):
            return
        gone = {path: entry for path, entry in self._kept.items() if entry[0] not in self.viewer.layers}
        for path in gone:  # its slide layer was deleted: the session saves and gives its project back
            del self._kept[path]
        _close_all(gone)
        known = self.sessions()
        rows = []
        for layer in slide_layers(self.viewer):
            entry = known.get(str(info_from_layer(layer).path))
            rows.append((layer.name, slide_state(entry[1] if entry else None)))
        labelled = [s for _, s in known.values() if sum(s.bags)]
        ready = (
            not self.busy
            and len(labelled) >= 2
            and sum(s.bags[0] for s in labelled) > 0
            and sum(s.bags[1] for s in labelled) > 0
        )
        self.slide_list.show_rows(rows, self.layer_combo.currentText(), group_ready=ready)
        self.slide_list.list.setEnabled(not self.busy)
        self.slide_list.open_manifest.setEnabled(not self.busy)
        # The combo can change without a signal (a slide opened): follow it once control returns to Qt.
        layer = self.selected_layer()
        path = None if layer is None else str(info_from_layer(layer).path)
        current = self.session
        if not self.busy and (path in self._kept or (current is not None and current.slide_path != path)):
            self._switch_timer.start()

    def _group_box_toggled(self, *_: object) -> None:
        self._update_buttons()

    def _row_chosen(self, *_: object) -> None:
        name = self.slide_list.chosen()
        if name is not None and name != self.layer_combo.currentText():
            self.layer_combo.setCurrentText(name)  # the combo follows; it switches the session

    def _switch_to_selected(self, *_: object) -> None:
        """The chosen slide layer changed: its session (if it was prepared) becomes the widget's; the
        session left is saved and kept, with its project's lock."""
        if not hasattr(self, "_kept") or self.busy:
            return
        layer = self.selected_layer()
        path = None if layer is None else str(info_from_layer(layer).path)
        current = self.session
        if current is not None and current.slide_path == path:
            return
        if current is not None and current.work is not None and self.layers.slide_name is not None:
            self._save_now()
            self._update_bag_note()  # strokes of the slide left are counted in its session
            self._kept[current.slide_path] = (self.layers.slide_name, current)
        self.session = self._session_holder[0] = None
        self.result_note.setText("")
        self.review_note.setText("")
        if path in self._kept:
            name, session = self._kept.pop(path)
            assert session.work is not None
            self.session = self._session_holder[0] = session
            self.layers.attach(name, session.work.downsample)
            self.collect_corrections()  # mask edits made while another slide was chosen
            session.bag_counts()  # ... and strokes in its weak labels: counted again
            self.result_note.setText(f"Saved in <i>{session.project.root.name}</i>")
            self.result_note.setToolTip(f"Project folder (autosaved): {session.project.root}")
        self._update_bag_note()
        self._update_buttons()

    def leave_session(self, old: SlideSession, new: SlideSession) -> None:
        """Prepare made ``new`` the widget's session instead of ``old`` (saved just before): ``old`` is
        kept (with its project's lock) when it is another slide's, else closed; a session kept of
        ``new``'s slide goes too (the new one has its project now)."""
        if old.slide_path != new.slide_path and old.work is not None and self.layers.slide_name:
            self._kept[old.slide_path] = (self.layers.slide_name, old)
        else:
            old.close()
        kept = self._kept.pop(new.slide_path, None)
        if kept is not None and kept[1] is not new:
            kept[1].close()

    # --- training on all prepared slides ---------------------------------------------------------

    def start_group_training(self, stage: str, *, resume: bool = True) -> None:
        """Train ``stage`` on the prepared slides with labels in a worker, then predict every prepared
        slide (those without labels too)."""
        if self._refuse_when_busy():
            return
        self._flush_edits()
        self._save_now()
        current = self.session
        if current is None or current.work is None:
            notify_error("choose a prepared slide first")
            return
        sessions = [session for _, session in self.sessions().values()]
        try:
            job = group_train_job(
                sessions,
                stage,
                self.training.config(current.work.grid.tile),
                root=self.projects_root,
                resume=resume,
                preview=current.slide_path,
            )
        except MilkdError as exc:
            notify_error(exc)
            return
        self._run_job(job, f"{stage} on {len(sessions)} slides: starting…", done=self._group_done)

    def _group_done(self, output: GroupOutput) -> None:
        """The group's model is trained and every slide predicted: each session saves its map and makes
        its mask in a worker; then each slide's layers show it."""
        self._drop_preview()
        known = self.sessions()
        try:
            todo = [
                (known[path][0], known[path][1], known[path][1].accept_job(output.of(path)))
                for path in output.slides
                if path in known
            ]
        except (MilkdError, OSError) as exc:
            self.training.status.setText(f"failed: {notify_error(exc)}")
            return

        def accept_all() -> list[tuple[str, SlideSession, AcceptedMap]]:
            return [(name, session, job()) for name, session, job in todo]

        def taken(results: list[tuple[str, SlideSession, AcceptedMap]]) -> None:
            alive = {id(s) for _, s in self.sessions().values()}
            for name, session, accepted in results:
                if id(session) in alive:
                    session.take(accepted)
                    if name in self.viewer.layers:  # its slide layer may have been deleted meanwhile
                        with self._showing(name, session):
                            self.show_stage(output.stage)
            result = output.result
            self.training.status.setText(
                f"{output.stage} done on {len(results)} slides: {result.epochs} epoch(s), selected epoch "
                f"{result.best_epoch} (validation: {output.how})"
            )
            self.training.status.setToolTip(f"group folder (model, manifest.csv): {output.folder}")
            notify_info(
                f"{output.stage} masks ready on {len(results)} slides — choose a slide in the list to "
                "review it",
                f"group folder: {output.folder}",
            )
            self._update_buttons()

        self.jobs.run(accept_all, text=f"{output.stage}: saving the maps…", done=taken, failed="")

    @contextlib.contextmanager
    def _showing(self, name: str, session: SlideSession) -> Iterator[None]:
        """Make ``session`` (over the slide layer ``name``) the widget's for a moment, to put its layers."""
        before, before_name = self.session, self.layers.slide_name
        before_downsample = self.layers.downsample
        assert session.work is not None
        self.session = session
        self.layers.attach(name, session.work.downsample)
        try:
            yield
        finally:
            self.session = before
            if before_name is not None:
                self.layers.attach(before_name, before_downsample)

    # --- a manifest opened as a group ------------------------------------------------------------

    def _open_manifest_dialog(self) -> None:
        start = getattr(self, "_last_manifest_folder", "")
        path = QFileDialog.getOpenFileName(self, "Open a slide manifest", start, MANIFEST_FILTER)[0]  # type: ignore[arg-type]
        if path:
            self._last_manifest_folder = str(Path(path).parent)
            self.open_manifest(path)

    def open_manifest(self, path: str | Path) -> None:
        """Open the slides of the ``milkd train --slides`` manifest ``path`` as a group: each prepared at
        the dock's working resolution and tile size with its row's annotations as weak labels (replacing
        the weak labels its project had; *Undo import* takes them back on the chosen slide). Checks and
        opens the slide layers now; prepares and reads the annotations in a worker; puts each slide's
        layers in steps. Any problem is one error notification."""
        if self._refuse_when_busy():
            return
        self._flush_edits()
        self._save_now()
        name = Path(path).name
        work_mpp, tile = float(self.target_spin.value()), int(self.tile_spin.value())
        held = {p: s for p, (_, s) in self.sessions().items()}
        try:
            entries = read_manifest_group(path)
            for entry in entries:
                session = next((s for p, s in held.items() if _same_file(p, entry.path)), None)
                if session is not None:
                    check_held_session(session, entry, work_mpp, tile)
            entries, names = self._manifest_layers(entries)
        except (MilkdError, OSError, ValueError) as exc:
            notify_error(f"cannot open the manifest {name}: {error_text(exc)}", str(path))
            return
        call = partial(
            open_manifest_slides,
            entries,
            work_mpp=work_mpp,
            tile=tile,
            root=self.projects_root,
            held=held,
            mpp_hint=MANIFEST_MPP_HINT,
        )
        self.jobs.run(
            call,
            text=f"opening {len(entries)} slides of {name}: tissue, tiles, weak labels…",
            done=lambda opened: self._manifest_steps(opened, names, name),
            failed=f"cannot open the manifest {name}",
        )

    def _manifest_layers(self, entries: list[ManifestSlide]) -> tuple[list[ManifestSlide], dict[str, str]]:
        """The slide layer of every manifest row, opened with milkd's reader when not open yet, given the
        manifest's µm/px where the file has none; returns the rows with the layers' slide paths and
        slide path → layer name. A layer open at another µm/px than the manifest's is refused."""
        out, names = [], {}
        for entry in entries:
            layer = next(
                (
                    lay
                    for lay in slide_layers(self.viewer)
                    if _same_file(info_from_layer(lay).path, entry.path)
                ),
                None,
            )
            if layer is not None and entry.slide_mpp is not None and info_from_layer(layer).has_mpp:
                shown = float(info_from_layer(layer).mpp or 0.0)
                if not math.isclose(shown, entry.slide_mpp, rel_tol=0.01):
                    raise InputError(
                        f"{layer.name} is open at {shown:g} µm/px; the manifest says {entry.slide_mpp:g}: "
                        "fix one of them"
                    )
            if layer is None:
                layer = next(
                    lay for lay in self.viewer.open(entry.path, plugin=PLUGIN) if SLIDE_META in lay.metadata
                )
            if entry.slide_mpp is not None and not info_from_layer(layer).has_mpp:
                give_layer_mpp(layer, entry.slide_mpp)
            path = str(info_from_layer(layer).path)
            out.append(replace(entry, path=path))
            names[path] = layer.name
        return out, names

    def _manifest_steps(self, opened: list[OpenedSlide], names: dict[str, str], manifest: str) -> Steps:
        """The manifest's slides are prepared and labelled: each becomes the dock's session in turn, its
        layers put as after Prepare (one per step); the last one stays chosen, the others are kept."""
        from napari_milkd._widget.slide_widget import _Prepared

        done: list[str] = []
        for k, item in enumerate(opened):
            session, name = item.session, names.get(item.entry.path)
            if name is None or name not in self.viewer.layers:  # its layer was deleted meanwhile
                if item.new:
                    session.close()
                continue
            try:
                taken = item.taken
                if taken is None:  # a slide prepared in the dock before: its session takes the labels
                    taken = take_manifest_labels(session, item.regions)
                    session.save()
            except (MilkdError, OSError) as exc:
                notify_error(f"{name}: {error_text(exc)}")
                continue
            for warning in item.warnings[:3]:
                notify_warning(f"{name}: {warning}")
            self.layer_combo.setCurrentText(name)
            self._planned = (name, session)
            assert session.work is not None
            yield from self._adopt_steps(_Prepared(session.work, list(item.restored), True, ((), ())))
            replaced = not item.new or any(r.startswith("weak labels") for r in item.restored)
            changed = (
                f", {taken.changed} px of its weak labels replaced" if taken.changed and replaced else ""
            )
            done.append(f"{name}: {taken.positive} positive / {taken.negative} negative bags{changed}")
            if k < len(opened) - 1:
                yield
        if self.bag_rule_combo.currentData() != REGIONS_RULE.name:
            self.bag_rule_combo.setCurrentIndex(self.bag_rule_combo.findData(REGIONS_RULE.name))
        if done:
            notify_info(
                f"opened {len(done)} slides of {manifest} as a group — tick '{TRAIN_ALL}' to train on them",
                "; ".join(done),
            )
        self.refresh_slide_list()
