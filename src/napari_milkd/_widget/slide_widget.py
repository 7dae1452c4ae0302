"""The milkd slide dock widget: a thin Qt face over one headless :class:`SlideSession`.

Workflow on the selected slide layer: facts and µm/px → *Prepare slide* (tissue, tiles, working
resolution; restores a saved project as it was) → paint weak labels (1 contains tumour, 2 tumour-free) or
import them → *Train teacher* → correct the teacher mask by hand → *Distil student* → *Next region to
review* → *Next round* → *Export*. Everything the user makes is autosaved in the slide's project folder.

The session owns the workflow state (geometry, weak labels, corrections, maps, reviewed tiles, round)
and every decision; this widget holds Qt state only (layers, the worker, timers) and forwards. Long work
runs in napari workers over the session's job generators, which work on copies; their results come back
to the session on the main thread (``returned``). Import, export and taking a finished stage's map (save,
mask) also run in a worker (:class:`~napari_milkd._widget.background.Background`, the UI busy meanwhile):
nothing a user does should hold the GUI thread for more than ~100 ms. Prepare's worker also adopts
(reads and resamples the project's maps, counts the bags), and what must touch layers afterwards (Prepare,
a finished stage, Go back) runs in steps, one layer per turn of the event loop
(:meth:`~napari_milkd._widget.background.Background.steps`), the widget busy until the last. The
weak-labels layer's data *is* ``session.weak``, so brush strokes land in the session and each recounts
only the tiles under it (:mod:`~napari_milkd._widget.slide_weak`); a mask layer holds a copy, and each
edit is handed to :meth:`SlideSession.record_edit`. Cancel calls ``worker.quit()`` (effective at the
next batch).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from napari_milkd._widget.background import Background, Steps
from napari_milkd._widget.gc_pauses import unfreeze_on_close, warm_up
from napari_milkd._widget.mask_style import MaskStyle, mask_colors
from napari_milkd._widget.qt_helpers import error_text, notify_error, notify_info, notify_warning
from napari_milkd._widget.round_list import go_back
from napari_milkd._widget.slide_buttons import SlideState, no_mask_reason
from napari_milkd._widget.slide_form import SlideForm
from napari_milkd._widget.slide_layers import (
    WEAK_COLORS,
    info_from_layer,
)
from napari_milkd._widget.slide_list import SlideGroupPart
from napari_milkd._widget.slide_weak import WeakLabelsPart
from napari_milkd.core.errors import MilkdError
from napari_milkd.core.runtime import leave_cores_for_the_gui
from napari_milkd.core.session.jobs import JobEvent, MapPreview, StageOutput
from napari_milkd.core.session.project import Project
from napari_milkd.core.session.slide_session import STAGES, AcceptedMap, SlideSession
from napari_milkd.core.session.weak_labels import REGION_FREE, REGION_TUMOUR
from napari_milkd.core.slides.geometry import SlideWork

if TYPE_CHECKING:
    import napari

    from napari_milkd.core.engine.config import TrainConfig

MPP_HINT = "enter it and press 'Set µm/px' first"


def _run(job: Generator[JobEvent, None, Any]) -> Generator[JobEvent, None, Any]:
    """Worker body: drive a job a session (or a group) made on the main thread (it holds copies only)."""
    return (yield from job)


def _use_run(
    session: SlideSession, folder: str | Path, config: TrainConfig
) -> Generator[JobEvent, None, Any]:
    """Worker body of "Use a trained run…": the run's checks and copies happen here too (reading a
    checkpoint imports torch and loads the model: seconds on the GUI thread); a refusal changes nothing
    and reaches the user as the job's error."""
    return (yield from session.use_run_job(folder, config))


#: Longest a Prepare worker waits for the GUI thread to show what it read (a safety net: it is set
#: when the layers are shown, when that fails, and when the widget goes).
SHOWN_TIMEOUT_S = 600.0
#: How long after the dock first shows its warm-up starts: once the dock is laid out and drawn. A worker
#: importing alongside that work took half of the 2 cores' time from it (the dock's opening froze the
#: viewer 200–300 ms instead of ~100 ms).
WARM_UP_AFTER_MS = 300


@dataclass(frozen=True)
class _Prepared:
    """What Prepare's worker made: the geometry, what the session restored (in words), whether the
    session took the project's lock, and :meth:`SlideSession.saved_stamp` before and after reading."""

    work: SlideWork
    restored: list[str]
    locked: bool
    stamps: tuple[Any, Any]


def _prepare(
    session: SlideSession, work_mpp: float, tile: int, lock: bool, shown: threading.Event
) -> Generator[_Prepared, None, None]:
    """Prepare's worker: plan tissue and tiles, then adopt them (read the project's maps, resample them,
    count the bags: seconds on a restored project) on a session the GUI does not hold yet; yield the
    result to the GUI thread and last until it has shown the layers (``shown``), so the job, and the
    widget's busy state, covers them."""
    work = session.plan(work_mpp, tile)
    before = session.saved_stamp()
    restored = session.adopt(work, lock=lock)
    import pandas  # noqa: F401  (napari's first Labels layer imports it: ~0.4 s, here off the GUI thread)

    yield _Prepared(work, restored, lock, (before, session.saved_stamp()))
    deadline = time.monotonic() + SHOWN_TIMEOUT_S
    while not shown.wait(0.1) and time.monotonic() < deadline:
        pass


def _style_of(style: MaskStyle) -> SimpleNamespace:
    """The ``contour`` and ``opacity`` the dock's mask controls ask for."""
    probe = SimpleNamespace(contour=None, opacity=None)
    style.apply(probe)
    return probe


class SlideWidget(SlideGroupPart, WeakLabelsPart, SlideForm):
    """napari-milkd: weak labels in, teacher and student masks out, corrected by hand, exported."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self._planned: tuple[str, SlideSession] | None = None
        self._bags = (0, 0)  # positive and negative bags of the prepared slide
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()
        self._autosave = QTimer(self, singleShot=True, interval=600)
        self._autosave.timeout.connect(self._autosave_in_background)
        self._saves_in_flight = 0  # autosaves being written by a worker
        self._edit_timer = QTimer(self, singleShot=True, interval=0)
        self._edit_timer.timeout.connect(self.collect_corrections)
        self._init_weak_labels()
        self._init_slide_group()  # the slide list: sessions of slides prepared before, training on all
        # Heavy imports off the GUI thread, then the start-up objects frozen out of the collector's walks:
        # started once the dock is shown and drawn, or by Prepare, whichever comes first.
        self.warmed_up = False
        self._watching_close = False
        self._warm_up: Any = None
        self._warm_up_timer = QTimer(self, singleShot=True, interval=WARM_UP_AFTER_MS)
        self._warm_up_timer.timeout.connect(self._start_warm_up)
        self.prepare_button.clicked.connect(self.start_prepare)
        self.paint_tumour.clicked.connect(lambda: self.start_painting(REGION_TUMOUR))
        self.paint_free.clicked.connect(lambda: self.start_painting(REGION_FREE))
        self.all_free.clicked.connect(self.mark_all_free)
        self.import_button.clicked.connect(self._import_dialog)
        self.undo_import_button.clicked.connect(self.undo_import)
        self.use_run_button.clicked.connect(self._use_run_dialog)
        self.train_teacher_button.clicked.connect(lambda: self.start_training("teacher"))
        self.train_student_button.clicked.connect(lambda: self.start_training("student"))
        self.next_round_button.clicked.connect(self.next_round)
        self.round_list.go_back.clicked.connect(self.go_back_to_round)
        self.review_button.clicked.connect(self.next_region)
        self.export_button.clicked.connect(self._export_dialog)
        self.training.busy_changed.connect(self._update_buttons)
        #: Import, export and taking a finished map run here, off the GUI thread.
        self.jobs = Background(self.training.status, self)
        self.mask_style.follow(lambda: [self.layers.get(f"{stage} mask") for stage in STAGES])
        self.jobs.busy_changed.connect(self._update_buttons)
        # Closing the viewer destroys the widget (after hideEvent saved): the project's lock goes back.
        self._session_holder: list[SlideSession | None] = [None]
        self.destroyed.connect(lambda *_, held=self._session_holder: held[0] and held[0].close())
        # ... and a Prepare worker waiting for its layers to be shown stops waiting.
        self._shown_holder: list[threading.Event] = [threading.Event()]
        self.destroyed.connect(lambda *_, held=self._shown_holder: held[0].set())
        self._refresh_layers()

    def hideEvent(self, event: Any) -> None:
        """Closing the viewer hides the dock first: write edits whose autosave is still pending."""
        self._save_now()
        super().hideEvent(event)

    def _prepared(self) -> SlideSession | None:
        """The session once its slide is prepared, else None."""
        return self.session if self.session is not None and self.session.work is not None else None

    def _update_buttons(self) -> None:
        layer, busy, stage = self.selected_layer(), self.busy, self.export_stage
        slide = None if layer is None else info_from_layer(layer)
        state = SlideState.of(
            self._prepared(), slide=slide, busy=busy, bags=self._bags, export_stage=stage.currentText()
        )
        self.enable(state)
        session = self._prepared()  # kept rounds appear after Prepare, Next round, training, going back
        root = session.project.root if session is not None else None
        self.round_list.refresh(root, ready=session is not None and not busy)

    @property
    def busy(self) -> bool:
        """True while a job (training, Prepare, import, export, saving a map) runs."""
        return self.training.worker is not None or self.jobs.busy

    def _refuse_when_busy(self) -> bool:
        if self.busy:
            notify_warning("wait for the running job, or cancel it")
        return self.busy

    # --- 1 · prepare -----------------------------------------------------------------------------

    def start_prepare(self) -> None:
        """Plan tissue and tiles for the selected slide in a worker, then let the session adopt them
        (restoring what its project saved)."""
        self._start_warm_up()  # pandas for the first Labels layer, if the dock has not started it yet
        layer = self.selected_layer()
        if layer is None:
            notify_error("select a slide layer first")
            return
        info = info_from_layer(layer)
        if not info.has_mpp:
            notify_error(f"{layer.name} has no µm/px; {MPP_HINT}")
            return
        if self._refuse_when_busy():
            return
        self._save_now()  # what was prepared before keeps its last edits
        reopened = self.session is None or self.session.slide_path != str(info.path)
        try:
            # A µm/px the user entered fills what the file lacks; it never replaces what the file says.
            user_mpp = info.mpp if info.mpp_source == "user" else None
            project = Project.for_slide(info.path, root=self.projects_root)
            session = SlideSession(info.path, slide_mpp=user_mpp, project=project, mpp_hint=MPP_HINT)
            if reopened:  # a reopened project comes back as it was
                self.take_saved_settings(session.saved_settings(), session.project.root)
            session.set_bag_rule(self.bag_rule_combo.currentData())
        except MilkdError as exc:
            notify_error(exc)
            return
        self.training.status.setText("finding tissue and tiles…")
        self.training.progress.setRange(0, 0)
        work_mpp, tile = float(self.target_spin.value()), int(self.tile_spin.value())
        # The session is adopted in the worker too, taking the project's lock there, unless the session
        # prepared before is on the same project: it keeps the lock (and saves) until the layers change.
        lock = self.session is None or self.session.project.root != session.project.root
        self._shown_holder[0].set()
        shown = self._shown_holder[0] = threading.Event()
        # Errors are shown once, by the panel, as a one-line notification.
        worker = create_worker(_prepare, session, work_mpp, tile, lock, shown, _ignore_errors=True)
        self._planned = (layer.name, session)
        worker.yielded.connect(self._adopt)
        self.training.run(worker, self._prepare_returned)

    def _start_warm_up(self) -> None:
        if self._warm_up is None:
            self._warm_up_timer.stop()
            self._warm_up = warm_up(self._warmed_up)

    def _warmed_up(self) -> None:
        self.warmed_up = True

    def showEvent(self, event: Any) -> None:
        """Docked and shown: the viewer's window is ours to watch (its close ends the gc freeze), and the
        warm-up follows the dock's first drawing."""
        super().showEvent(event)
        if not self._watching_close and self.window() is not self:
            unfreeze_on_close(self.window())
            self._watching_close = True
        if self._warm_up is None and not self._warm_up_timer.isActive():
            self._warm_up_timer.start()

    def _prepare_returned(self, _: object) -> None:
        """Prepare's worker ends once its layers are shown (:meth:`_adopt` did the work)."""

    def _adopt(self, prepared: _Prepared) -> None:
        """Prepare's worker read the project: show it, one layer per turn of the event loop."""
        shown = self._shown_holder[0]

        def steps() -> Steps:
            try:
                yield from self._adopt_steps(prepared)
            finally:
                shown.set()  # the worker ends, and the widget is ready

        self.jobs.steps(steps())

    def _put_weak_layer(self, session: SlideSession) -> None:
        assert session.work is not None and session.weak is not None
        weak = self.layers.put_labels("weak labels", session.weak, WEAK_COLORS, opacity=0.45)
        weak.brush_size = max(10, session.work.grid.tile // 2)
        if weak not in self._watched:
            weak.events.paint.connect(self._on_weak_paint)
            weak.events.data.connect(self._on_weak_edit)
            self._watched.add(weak)

    def _adopt_steps(self, prepared: _Prepared) -> Steps:
        """Prepare's GUI half: the session becomes the widget's, then its layers are put one per step
        (tiles, weak labels, each restored stage's mask), then the map the dock shows is refilled."""
        assert self._planned is not None
        slide_name, session = self._planned
        work, restored = prepared.work, prepared.restored
        self._save_now()  # strokes made while preparing belong to the session prepared before
        try:
            if not prepared.locked:  # that session was on this project: it has just saved its last edits
                session.take_lock()
                before, after = prepared.stamps
                if session.saved_stamp() != after or before != after:  # saved while the worker read
                    restored = session.adopt(work)  # read again (rare: strokes made during Prepare)
        except (MilkdError, OSError) as exc:
            self.training.status.setText(f"failed: {notify_error(exc)}")
            return
        if self.session is not None and self.session is not session:
            self.leave_session(self.session, session)  # saved above; kept, or closed when the same slide
        self.session = self._session_holder[0] = session
        self.layers.attach(slide_name, work.downsample)
        assert session.tissue is not None and session.weak is not None
        weak = self.layers.get("weak labels")
        if weak is not None and weak.data.shape == session.weak.shape:  # strokes land in this session now
            self._put_weak_layer(session)
        with self.layers.hidden() as added:  # outlined over the whole map: drawn in the next steps
            self.put_tiles_layer(work)
        yield from self.layers.reveal(added)
        yield
        weak = self.layers.get("weak labels")
        if weak is None or weak.data is not session.weak:
            with self.layers.hidden() as added:
                self._put_weak_layer(session)
            yield from self.layers.reveal(added)
        for stage in STAGES:
            if session.mask(stage) is not None:
                yield
                yield from self._stage_layers(session, stage)
        self.map_view.refresh()  # the map shown (tissue, a probability) is this session's now
        if restored:
            notify_info(f"restored {', '.join(restored)}", f"project folder: {session.project.root}")
        grid = work.grid
        self.result_note.setText(
            f"{len(grid)} tissue tiles of {grid.tile} px at {grid.mpp:g} µm/px (level {grid.level}); "
            f"tissue covers {100 * work.tissue.fraction:.0f}% of the slide.<br>"
            f"Saved in <i>{session.project.root.name}</i>"
        )
        self.result_note.setToolTip(f"Project folder (autosaved): {session.project.root}")
        self.training.status.setText("")
        self._update_bag_note()
        self._update_buttons()
        self.focus_section("weak", summary=f"{len(grid)} tiles at {grid.mpp:g} µm/px", also=("train",))

    # --- 3 · training ----------------------------------------------------------------------------

    def start_training(self, stage: str, *, resume: bool = True) -> None:
        """Train the teacher, or distil the student from it, in a worker; then predict the slide."""
        if self.slide_list.group_ticked:  # "Train on all prepared slides"
            self.start_group_training(stage, resume=resume)
            return
        session = self._prepared()
        if session is None or session.work is None:
            notify_error("prepare the slide first")
            return
        if self._refuse_when_busy():
            return
        self._flush_edits()
        try:
            job = session.train_job(stage, self.training.config(session.work.grid.tile), resume=resume)
        except MilkdError as exc:
            notify_error(exc)
            return
        self._run_job(job, f"{stage}: starting…")

    def next_round(self) -> None:
        """The student (its maps and corrections included) becomes the teacher; distil a new student."""
        session = self._prepared()
        if session is None or session.work is None or self._refuse_when_busy():
            return
        self._flush_edits()
        config = self.training.config(session.work.grid.tile)

        def promoted(_: object) -> Steps | None:
            return self._distil_after_promotion(session, config) if self.session is session else None

        # Keeping the round, copying the model and rebuilding the teacher's mask take seconds: a worker.
        text = "next round: the student becomes the teacher…"
        self.jobs.run(session.promote_student, text=text, done=promoted, failed="next round")

    def _distil_after_promotion(self, session: SlideSession, config: Any) -> Steps:
        """Next round's GUI half: show the promoted teacher, then distil the new student."""
        yield from self._stage_layers(session, "teacher")  # the student's map is the teacher's now
        yield
        try:
            job = session.train_job("student", config, resume=False)
        except MilkdError as exc:
            notify_error(exc)
            return
        self._run_job(job, "student: starting…")

    def _use_run_dialog(self) -> None:
        session = self._prepared()
        start = "" if session is None else str(session.project.root.parent)
        folder = QFileDialog.getExistingDirectory(self, "Use the models of a trained run", start)
        if folder:
            self.use_run(folder)

    def use_run(self, folder: str | Path) -> None:
        """Predict the slide with the models of the run ``folder`` (trained headless or on a slide group);
        they become the session's (the previous ones are kept as a round)."""
        session = self._prepared()
        if session is None or session.work is None or self._refuse_when_busy():
            return
        self._flush_edits()
        job = _use_run(session, folder, self.training.config(session.work.grid.tile))
        self._run_job(job, f"predicting with {Path(folder).name}…", done=self._run_models_done)

    def _run_models_done(self, outputs: list[StageOutput]) -> None:
        """A run's models predicted the slide: their maps are saved in a worker, then shown one by one."""
        self.layers.drop_preview()
        session = self.session
        if session is None:
            return
        try:
            calls = [session.accept_job(output) for output in outputs]
        except (MilkdError, OSError) as exc:
            self.training.status.setText(f"failed: {notify_error(exc)}")
            return

        def taken(accepted: list[AcceptedMap]) -> Steps | None:
            if self.session is not session:
                return None
            return (step for item in accepted for step in self._stage_taken(session, item))

        self.jobs.run(lambda: [call() for call in calls], text="saving the maps…", done=taken, failed="")

    def go_back_to_round(self) -> None:
        """Bring back the round chosen in section 3 (its models and masks; corrections are kept)."""
        go_back(self)

    def _run_job(
        self, job: Generator[Any, None, Any], text: str, done: Callable[[Any], None] | None = None
    ) -> None:
        """Drive a training job (one slide's, or a group's) in a worker with progress, preview and
        Cancel; ``done`` (default: :meth:`_stage_done`) gets its result on the GUI thread."""
        self.training.reset(text)
        self.layers.start_preview()
        leave_cores_for_the_gui()
        worker = create_worker(_run, job, _ignore_errors=True)
        worker.yielded.connect(self._on_event)
        # Bound methods, not lambdas: Qt disconnects them when the widget is destroyed (viewer closed).
        worker.errored.connect(self._drop_preview)
        worker.aborted.connect(self._on_aborted)
        aborted = "cancelled — the last finished epoch is kept; train again to continue from it"
        self.training.run(worker, done or self._stage_done, aborted=aborted)

    def _on_event(self, event: JobEvent) -> None:
        if isinstance(event, MapPreview):
            self.layers.show_preview(event)

    def _drop_preview(self, *_: object) -> None:
        self.layers.drop_preview()

    def _on_aborted(self) -> None:
        self.layers.drop_preview()
        notify_info("job cancelled")

    def _stage_done(self, output: StageOutput) -> None:
        """A stage finished: its map is saved and made a mask in a worker; :meth:`_stage_taken` shows it."""
        self.layers.drop_preview()
        session = self.session
        if session is None:
            return
        try:
            job = session.accept_job(output)
        except (MilkdError, OSError) as exc:
            self.training.status.setText(f"failed: {notify_error(exc)}")
            return

        def taken(accepted: AcceptedMap) -> Steps | None:
            return self._stage_taken(session, accepted) if self.session is session else None

        self.jobs.run(job, text=f"{output.stage}: saving its map…", done=taken, failed="")

    def _stage_taken(self, session: SlideSession, accepted: AcceptedMap) -> Steps:
        """A finished stage's GUI half in steps: the map becomes the session's, then its mask layer (and the
        map the dock shows, refilled); the status line says it is done after the last."""
        output = accepted.output
        if self.session is not session:
            return
        session.take(accepted)
        yield
        yield from self._stage_layers(session, output.stage)
        result = output.result
        self.training.status.setText(
            f"{output.stage} done: {result.epochs} epoch(s), selected epoch {result.best_epoch} "
            f"({output.n_positive} positive / {output.n_negative} negative bags)"
        )
        self.training.status.setToolTip(accepted.description or "")
        notify_info(f"{output.stage} mask ready — paint or erase in it to correct it")
        self.focus_section("review")  # the corrected-pixels note and Export, in view while painting

    # --- masks and corrections -------------------------------------------------------------------

    def show_stage(self, stage: str) -> None:
        """Show the session's probability and (corrected) mask of ``stage`` as layers, and the
        teacher/student disagreement once both exist; nothing when the stage has no map yet. All at
        once; :meth:`_stage_layers` is the same in steps."""
        session = self._prepared()
        if session is not None:
            for _ in self._stage_layers(session, stage):
                pass

    def _stage_layers(self, session: SlideSession, stage: str) -> Steps:
        """:meth:`show_stage` for ``session``, one layer per step (creating or refilling a working-size
        layer costs 0.1–0.3 s on the GUI thread under software OpenGL)."""
        mask = session.mask(stage)
        if mask is None:
            return
        # The layer gets a copy: the session tells an edit by comparing with its own mask. The dock's
        # style is applied only where the layer lacks it: each ``contour`` set recomputes the outlines
        # over the whole map, which its new data has just done.
        # A new layer is added hidden and styled, and drawn (outlines and all) in the next steps.
        style = _style_of(self.mask_style)
        with self.layers.hidden() as added:
            layer = self.layers.put_labels(f"{stage} mask", mask.copy(), mask_colors(stage))
        if (layer.contour, layer.opacity) != (style.contour, style.opacity):
            self.mask_style.apply(layer)
        if layer not in self._watched:
            # napari emits ``paint`` before it writes the pixels: re-read once control returns to Qt.
            layer.events.paint.connect(lambda *_: self._edit_timer.start())
            self._watched.add(layer)
        yield from self.layers.reveal(added)
        if self.map_view.layer is not None and self.map_view.layer.visible:  # a map it changed is shown
            yield
        self.map_view.refresh()
        self.export_stage.setCurrentText(stage)  # the newest mask is the one to export
        self.sections["review"].expand(animate=False)  # a mask to review and export: its section open
        self._update_buttons()

    def collect_corrections(self) -> None:
        """After a paint/erase in a mask layer: the session records what changed as ground truth."""
        session = self._prepared()
        if session is None:
            return
        for stage in STAGES:
            layer, mask = self.layers.get(f"{stage} mask"), session.mask(stage)
            if layer is not None and mask is not None and layer.data.shape == mask.shape:
                session.record_edit(stage, np.asarray(layer.data))
        self.review_note.setText(
            f"{session.corrected_pixels} corrected pixels (used as ground truth in the next distillation)"
        )
        self._autosave.start()

    def _flush_edits(self) -> None:
        if self._edit_timer.isActive():
            self._edit_timer.stop()
            self.collect_corrections()

    def _save_now(self) -> None:
        self._flush_edits()
        if self._autosave.isActive() or self._saves_in_flight:
            self._autosave.stop()
            self.save_session()  # newer than any autosave in flight, which then writes nothing

    def save_session(self) -> None:
        """Write weak labels and corrections to the project folder (atomic; autosaved after edits)."""
        if self.session is None:
            return
        try:
            self.session.save()
        except OSError as exc:
            notify_error("could not save the project", f"{self.session.project.root}: {exc}")

    def _autosave_in_background(self) -> None:
        """The autosave: the maps are copied here, compressed and written by a worker (a large working
        map takes a second or more to compress)."""
        session = self.session
        if session is None:
            return
        root = session.project.root
        try:
            write = session.save_job()
        except OSError as exc:
            notify_error("could not save the project", f"{root}: {exc}")
            return
        worker = create_worker(write, _ignore_errors=True)
        self._saves_in_flight += 1
        worker.errored.connect(self._autosave_failed)
        worker.finished.connect(self._autosave_finished)
        worker.start()

    # Bound methods, not lambdas: Qt disconnects them when the widget is destroyed (viewer closed).
    def _autosave_failed(self, exc: BaseException) -> None:
        notify_error("could not save the project", error_text(exc))

    def _autosave_finished(self) -> None:
        self._saves_in_flight -= 1

    # --- 4 · review and export -------------------------------------------------------------------

    def next_region(self) -> int | None:
        """Move the camera to the tile the session ranks next for review; return its index."""
        session = self._prepared()
        if session is None or not session.probabilities:
            return None
        scores = session.region_scores()
        tile = session.next_region()
        if tile is None:
            self.review_note.setText("every tile has been reviewed")
            return None
        self.layers.show_region(session.region_bounds_l0(tile))
        self.review_note.setText(
            f"tile {tile}: score {scores[tile]:.2f} — {len(session.reviewed)} of {len(scores)} tiles reviewed"
        )
        return tile

    def _export_dialog(self) -> None:
        session = self._prepared()
        if session is None:
            return
        stage, fmt, suffix = self.export_choice()
        if session.mask(stage) is None:
            notify_error(no_mask_reason(stage, session.has_model(stage)))
            return
        path = self.ask_export_path(session.project.exports / f"{stage}{suffix}", fmt)
        if not path:
            return
        if self._refuse_when_busy():
            return
        self._flush_edits()
        try:
            write = session.export_job(stage, fmt, path)
        except (MilkdError, OSError) as exc:
            notify_error(f"export failed: {error_text(exc)}")
            return
        gone = self.layers.get(f"{stage} mask") is None  # the session's mask, edits included, is written

        def written(target: Path) -> None:
            notify_info(
                f"wrote {target.name}" + (" (its mask layer was deleted)" if gone else ""), str(target)
            )

        self.jobs.run(write, text=f"writing {Path(path).name}…", done=written, failed="export failed")
