"""One slide's workflow, headless: the object every front end (widget, CLI, demo, benchmarks) drives.

:class:`SlideSession` owns one slide's working geometry, weak labels, corrections (hard labels),
teacher/student probability maps and masks, reviewed regions, rounds and the project folder, with
methods in the user's vocabulary: prepare, paint/import weak labels, train the teacher, distil the
student, record an edit, next region, next round, export, save, restore.

Rounds. Before a finished model is replaced (Next round, training a stage again, going back) the
session keeps what it has as a round under ``<project>/rounds/<n>/`` (:mod:`~napari_milkd.core.session.
rounds`): :meth:`SlideSession.rounds` lists them and :meth:`SlideSession.restore_round` brings one back,
keeping the state it replaces as a new round first. Corrections are never rolled back.

Threading. Methods that change the session run on the caller's thread (the GUI thread in napari). Long
work is split in two: a *job* method (:meth:`SlideSession.plan`, :meth:`SlideSession.train_job`) works on
copies and may run in a worker thread, and an *adopt* method (:meth:`SlideSession.adopt`,
:meth:`SlideSession.accept`) takes its result back. Headless callers use the one-call forms
(:meth:`SlideSession.prepare`, :meth:`SlideSession.train`).

The project. :meth:`SlideSession.adopt` takes the project's lock (:meth:`Project.lock`: a session of
another process on the same project is refused with a one-line error naming it) and :meth:`close` (or
leaving a ``with`` block) gives it back. A damaged saved file does not stop Prepare: it is kept aside
and that item starts empty, and the list adopt returns says so.

All maps are ``(row, col)`` arrays at the working resolution (:mod:`napari_milkd.core.slides.geometry`):
weak labels 0 none / 1 contains tumour / 2 tumour-free; corrections 0 / 1, ``NO_OPINION`` untouched;
probabilities float32 in [0, 1]; masks uint8 0/1. May import every core package; never napari or Qt.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_milkd.core.atomic import atomic_path
from napari_milkd.core.engine.card import slide_provenance
from napari_milkd.core.engine.config import TrainConfig, TrainResult
from napari_milkd.core.errors import InputError, MilkdError, SlideError, WriteError
from napari_milkd.core.inference.masks import mask_from_probability, mask_halo, mask_polygons
from napari_milkd.core.progress import drain
from napari_milkd.core.session.jobs import JobEvent, StageOutput, predict_stage_map, slide_stage_job
from napari_milkd.core.session.labels import NO_OPINION, apply_corrections, record_corrections
from napari_milkd.core.session.project import DamagedProjectFile, Project, ProjectLock
from napari_milkd.core.session.rounds import (
    RoundInfo,
    archive_round,
    fingerprint,
    kept_fingerprints,
    list_rounds,
    load_mask,
    load_probability,
    mask_dice,
    read_round,
    replace_with,
)
from napari_milkd.core.session.weak_labels import (
    BAG_RULES,
    REGION_FREE,
    REGION_TUMOUR,
    REGIONS_RULE,
    BagCounter,
    BagLabels,
    BagRule,
)
from napari_milkd.core.session.weak_labels import bag_rule as weak_bag_rule
from napari_milkd.core.slides.geometry import SlideWork, plan_work, tile_crops, tissue_map
from napari_milkd.core.slides.sample import is_sample_slide
from napari_milkd.core.slides.slide import open_slide
from napari_milkd.core.slides.types import SlideInfo

#: The two models of a session, in training order.
STAGES = ("teacher", "student")
#: Where :meth:`SlideSession.apply_import` can put imported regions.
IMPORT_TARGETS = ("weak", "corrections")
#: The :class:`TrainConfig` fields a project remembers, so a reopened project trains as before.
TRAINING_SETTINGS = ("backbone", "net", "teacher_epochs", "student_epochs", "batch_size")
#: Largest working map side: bigger editable Labels break napari's painting (texture limit).
MAX_WORK_SIDE = 16384
#: Export formats :meth:`SlideSession.export` writes.
EXPORT_FORMATS = ("geojson", "asap", "ome-zarr")


@dataclass(frozen=True)
class ImportSummary:
    """What an annotation import did: regions read, one line per warning (the message naming unknown
    classes and skipped objects first), every class with its label and count (``classes``: rows with
    ``name``, ``label``, ``count``), and objects skipped by type (``{"detection": n, ...}``)."""

    n_regions: int
    warnings: tuple[str, ...]
    classes: tuple[Any, ...] = ()
    skipped: dict[str, int] | None = None


def _box_of(changed: np.ndarray) -> tuple[int, int, int, int]:
    """``(row0, col0, row1, col1)`` around the True pixels of ``changed`` (empty when there are none)."""
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


@dataclass(frozen=True)
class ImportedRegions:
    """An annotation file read and rasterised at the working geometry (:meth:`SlideSession.read_import`),
    not yet painted: ``labels`` (weak-label values, 0 = none) and ``excluded`` (erases) maps, cropped to
    ``box`` (``(row0, col0, row1, col1)`` of a working map of ``shape``) around everything they change."""

    labels: np.ndarray
    excluded: np.ndarray
    box: tuple[int, int, int, int]
    shape: tuple[int, int]
    summary: ImportSummary


@dataclass(frozen=True)
class AcceptedMap:
    """A finished job's map, saved and made into a mask off the GUI thread (:meth:`SlideSession.accept_job`);
    :meth:`SlideSession.take` makes it the session's. ``description`` is the model card's line."""

    output: StageOutput
    probability: np.ndarray
    mask: np.ndarray
    hard: np.ndarray
    description: str | None


@dataclass(frozen=True)
class RestoredRound:
    """A kept round read back off the GUI thread (:meth:`SlideSession.restore_round_job`), not yet the
    session's: its ``number``, the round the state it replaces was kept as (``kept_as``; None when that
    state was already kept), the stages with a model, their maps and masks (the corrections of ``hard``
    applied), the session round counter and the stage metrics of the round."""

    number: int
    kept_as: RoundInfo | None
    stages: tuple[str, ...]
    probabilities: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    hard: np.ndarray
    session_round: int
    metrics: dict[str, dict[str, Any]]


def _metrics_of(output: StageOutput) -> dict[str, Any]:
    """What a round records of a finished stage: epochs, selected epoch and its score, bag counts."""
    result = output.result
    score = result.best_score
    return {
        "epochs": int(result.epochs),
        "best_epoch": int(result.best_epoch),
        "best_score": float(score) if score is not None else None,
        "n_positive": int(output.n_positive),
        "n_negative": int(output.n_negative),
    }


class SlideSession:
    """One slide's weak-label → teacher → student → corrections → export workflow (see module docstring).

    ``slide_mpp`` is the slide's level-0 µm/px for files that do not record it; a slide without µm/px
    and no ``slide_mpp`` is refused (:class:`SlideError`, ending with the front end's ``mpp_hint`` on how
    to give it). ``project`` defaults to the slide's project
    folder (:meth:`Project.for_slide`).
    """

    def __init__(
        self,
        slide_path: str | Path,
        *,
        slide_mpp: float | None = None,
        project: Project | None = None,
        mpp_hint: str = "give the slide's level-0 µm/px",
        bag_rule: str | None = None,
    ) -> None:
        source = open_slide(slide_path, mpp=slide_mpp)
        try:
            self.info: SlideInfo = source.info
        finally:
            source.close()
        if self.info.mpp is None:
            raise SlideError(f"{Path(slide_path).name} does not record its µm/px; {mpp_hint}")
        self.slide_path = str(slide_path)
        self.slide_mpp = slide_mpp
        self.project = project if project is not None else Project.for_slide(slide_path)
        self.work: SlideWork | None = None
        self.tissue: np.ndarray | None = None
        self.weak: np.ndarray | None = None
        self.hard: np.ndarray | None = None
        self.probabilities: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.reviewed: set[int] = set()
        self.round = 0
        #: What is known of each stage's current model (see :func:`_metrics_of`), kept with its round.
        self.stage_metrics: dict[str, dict[str, Any]] = {}
        self._lock: ProjectLock | None = None
        self._closed = False
        #: Saves in order: held while one writes and while the session closes; the newest snapshot wins.
        self._save_guard = threading.Lock()
        self._save_seq = self._written_seq = 0
        self._damage_notes: list[str] = []
        self._bag_counter: BagCounter | None = None
        #: The last import, to undo it: (target, box, what the box held before).
        self._last_import: tuple[str, tuple[int, int, int, int], np.ndarray] | None = None
        #: How painted regions become bags (``bag_rule`` names it; else the project's, else regions).
        self.bag_rule: BagRule = weak_bag_rule(bag_rule) if bag_rule else REGIONS_RULE
        self._rule_given = bag_rule is not None
        #: The training settings of the last run (:data:`TRAINING_SETTINGS`), kept in the project.
        self.training_settings: dict[str, Any] = {}

    # --- lifetime ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Give the project's lock back (nothing is saved: call :meth:`save` first). Safe to call more
        than once; a closed session refuses to save."""
        with self._save_guard:  # a save being written finishes first; one not started yet is refused
            self._closed = True
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> SlideSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_lock(self) -> None:
        if self._closed:
            raise InputError("this session was closed; open the slide again")
        if self._lock is not None and self._lock.held:
            return
        self._lock = self.project.lock(holder=self)

    def _require_lock(self) -> None:
        """Refuse to write (a :class:`WriteError`, so front ends that handle failed saves show it) when
        this session was closed or a later session took the project."""
        if self._closed:
            raise WriteError(f"this session on {Path(self.slide_path).name} was closed: nothing was saved")
        if self._lock is not None and not self._lock.held:
            raise WriteError(
                f"project {self.project.root} was opened by another session: this one no longer saves "
                "(prepare the slide again to take it back)"
            )

    # --- prepare -------------------------------------------------------------------------------------

    def saved_settings(self) -> dict[str, Any]:
        """What the project folder recorded last time (``work_mpp``, ``tile``, ``round``, ...), or ``{}``
        (also when ``project.json`` is damaged: it is kept aside, and the next :meth:`adopt` says so)."""
        try:
            return self.project.load_settings()
        except DamagedProjectFile as exc:
            self._damage_notes.append(exc.describe("starting with default settings"))
            return {}

    def plan(self, work_mpp: float, tile: int) -> SlideWork:
        """Tissue, tile grid and working-map geometry at ``work_mpp`` µm/px with ``tile``-px tiles.

        Changes nothing in the session (safe in a worker thread); :meth:`adopt` takes the result.
        """
        if not work_mpp > 0:
            raise InputError(f"working resolution must be positive, got {work_mpp}")
        source = open_slide(self.slide_path, mpp=self.slide_mpp)
        try:
            work = plan_work(source, work_mpp=work_mpp, tile=tile)
        finally:
            source.close()
        if max(work.shape) > MAX_WORK_SIDE:
            raise MilkdError(
                f"working map would be {work.shape[1]}×{work.shape[0]} px; napari cannot paint labels above "
                f"{MAX_WORK_SIDE} px per side: choose a coarser working resolution than {work_mpp:g} µm/px"
            )
        return work

    def adopt(self, work: SlideWork, *, lock: bool = True) -> list[str]:
        """Make ``work`` the session's geometry and restore what the project saved; return what was
        restored, in words. Saved maps of another geometry are resampled onto this one, never dropped;
        a damaged saved file is kept aside (``<name>.corrupt-<time>``), that item starts empty, and the
        list says so. Takes the project's lock first: another process's session on the same project is
        a one-line :class:`InputError` naming it, and nothing changes.

        A session nobody else holds yet may adopt in a worker thread (the widget does: reading, resampling
        and counting take seconds). ``lock=False`` leaves the lock to :meth:`take_lock` when an earlier
        session of this process on the same project still has edits to save; :meth:`saved_stamp`, taken
        before and compared after, tells whether it saved meanwhile (then adopt again)."""
        if lock:
            self._take_lock()
        self.work = work
        self.tissue = tissue_map(work)
        self.probabilities, self.masks, self.reviewed = {}, {}, set()
        self._last_import = None
        restored: list[str] = []
        weak = self._restored("weak_labels", order=0, said="weak labels", restored=restored)
        self.weak = weak.astype(np.uint8) if weak is not None else np.zeros(work.shape, np.uint8)
        self._bag_counter = BagCounter(work.grid, work.downsample, self.weak, rule=self.bag_rule)
        hard = self._restored("corrections", order=0, said="corrections", restored=restored)
        self.hard = hard.astype(np.uint8) if hard is not None else np.full(work.shape, NO_OPINION, np.uint8)
        if hard is not None:
            restored[-1] = f"{self.corrected_pixels} corrected pixels" + restored[-1][len("corrections") :]
        for stage in STAGES:
            prob = self._restored(f"{stage}_probability", order=1, said=f"{stage} mask", restored=restored)
            if prob is not None:
                self._set_probability(stage, prob.astype(np.float32))
        settings = self.saved_settings()
        restored.extend(self._damage_notes)
        self._damage_notes = []
        self.round = int(settings.get("round", 0)) if isinstance(settings.get("round", 0), int) else 0
        metrics = settings.get("stage_metrics")
        self.stage_metrics = {s: dict(m) for s, m in metrics.items()} if isinstance(metrics, dict) else {}
        training = settings.get("training")
        self.training_settings = dict(training) if isinstance(training, dict) else {}
        if not self._rule_given and settings.get("bag_rule") in BAG_RULES:
            self.set_bag_rule(settings["bag_rule"])
        self._save_settings()
        return restored

    def take_lock(self) -> None:
        """Take the project's lock now (what :meth:`adopt` does first; see its ``lock``)."""
        self._take_lock()

    def saved_stamp(self) -> tuple[Any, ...]:
        """Size and modification time of the saved weak labels and corrections (what edits change): equal
        stamps before and after an :meth:`adopt` mean it read the latest saved edits."""
        return tuple(fingerprint(self._array_file(name)) for name in ("weak_labels", "corrections"))

    def prepare(self, work_mpp: float, tile: int) -> list[str]:
        """:meth:`plan` then :meth:`adopt`, in one call (headless use)."""
        return self.adopt(self.plan(work_mpp, tile))

    def _restored(self, name: str, *, order: int, said: str, restored: list[str]) -> np.ndarray | None:
        """A saved map at the working geometry (resampled when it was saved at another), or None."""
        assert self.work is not None
        empty = "starting without it" if order else "starting empty"
        try:
            saved = self.project.load_array(name)
        except DamagedProjectFile as exc:
            restored.append(exc.describe(empty))
            return None
        if saved is None:
            return None
        data, meta = saved
        if data.ndim != 2:
            path = self.project.root / "arrays" / f"{name}.npz"
            aside = self.project.set_aside(path)
            restored.append(DamagedProjectFile("", path=path, aside=aside).describe(empty))
            return None
        if data.shape == self.work.shape:
            restored.append(said)
            return data
        from skimage.transform import resize

        was = meta.get("work_mpp")
        restored.append(f"{said} (resampled from {was:g} µm/px)" if was else f"{said} (resampled)")
        return resize(data, self.work.shape, order=order, preserve_range=True, anti_aliasing=False).astype(
            data.dtype
        )

    def _require_work(self) -> SlideWork:
        if self.work is None:
            raise InputError("prepare the slide first")
        return self.work

    def _save_settings(self) -> None:
        work = self._require_work()
        self._require_lock()
        self.project.save_settings(
            {
                "slide": self.info.path,
                "mpp": self.info.mpp,
                "work_mpp": work.grid.mpp,
                "tile": work.grid.tile,
                "shape": list(work.shape),
                "round": self.round,
                "stage_metrics": self.stage_metrics,
                "bag_rule": self.bag_rule.name,
                "training": self.training_settings,
            }
        )

    # --- weak labels ---------------------------------------------------------------------------------

    def set_weak_labels(self, regions: np.ndarray) -> None:
        """Replace the weak-label map (1 contains tumour, 2 tumour-free, 0 no label)."""
        work = self._require_work()
        regions = np.asarray(regions)
        if regions.shape != work.shape:
            raise InputError(f"weak-label map is {regions.shape}, expected {work.shape} (working resolution)")
        self.weak = regions.astype(np.uint8, copy=True)
        self.weak_edited()

    def mark_all_free(self) -> None:
        """Mark all tissue tumour-free (a negative slide); painted tumour regions are kept."""
        self._require_work()
        assert self.weak is not None and self.tissue is not None
        self.weak[self.tissue & (self.weak != REGION_TUMOUR)] = REGION_FREE
        self.weak_edited()

    def import_annotations(
        self, path: str | Path, class_map: str | Path | dict[str, str] | None = None
    ) -> ImportSummary:
        """Add regions from a QuPath GeoJSON or ASAP XML file, by what each class means
        (``core.annotations.classes``): ``positive`` → contains tumour, ``negative`` → tumour-free,
        ``ignored`` (``Ignore*``, and every unknown or missing class) → not painted, ``exclusion``
        (ASAP ``_2``) → erases the weak labels under it. ``class_map`` (a JSON/CSV file or a mapping
        class → label) overrides the defaults. Only QuPath *annotations* are regions; detections and
        cells are skipped and counted. QuPath coordinates are shifted by the slide's bounds offset."""

        return self.apply_import(self.read_import(path, class_map))

    def read_import(
        self, path: str | Path, class_map: str | Path | dict[str, str] | None = None
    ) -> ImportedRegions:
        """The reading and rasterising half of :meth:`import_annotations`: changes nothing in the session
        (safe in a worker thread); :meth:`apply_import` paints the result."""
        from napari_milkd.core.annotations import NEGATIVE, POSITIVE, regions_from_annotations
        from napari_milkd.core.annotations.io import annotation_report, class_map_from, read_annotations

        work = self._require_work()
        mapping = class_map_from(class_map)
        result = read_annotations(
            path, slide_shape_l0=self.info.shape, offset_l0=self.info.offset_l0, class_map=mapping
        )
        report = annotation_report(result, mapping)
        labels, excluded = regions_from_annotations(
            result.annotations,
            work.shape,
            work.downsample,
            mapping,
            values={POSITIVE: REGION_TUMOUR, NEGATIVE: REGION_FREE},
        )
        warnings = ((report.message,) if report.message else ()) + tuple(result.warnings)
        summary = ImportSummary(len(result.annotations), warnings, report.classes, dict(report.skipped))
        r0, c0, r1, c1 = box = _box_of((labels > 0) | excluded)
        crop = (slice(r0, r1), slice(c0, c1))
        return ImportedRegions(labels[crop].copy(), excluded[crop].copy(), box, work.shape, summary)

    def apply_import(self, imported: ImportedRegions, into: str = "weak") -> ImportSummary:
        """Paint what :meth:`read_import` read (only inside its regions' box) and return its summary.

        ``into="weak"``: into the weak labels ("contains tumour" / "tumour-free"; exclusions erase), and
        the bags under the box are recounted. ``into="corrections"``: as hand corrections (ground truth:
        positive regions tumour, negative regions not; exclusions clear corrections), applied to every
        mask. Either can be taken back with :meth:`undo_import` (the last import only)."""
        work = self._require_work()
        assert self.weak is not None and self.hard is not None
        if into not in IMPORT_TARGETS:
            raise InputError(f"cannot import into {into!r}; choose {' or '.join(IMPORT_TARGETS)}")
        if imported.shape != work.shape:
            raise InputError("the slide was prepared again while the file was read: import it again")
        r0, c0, r1, c1 = box = imported.box
        labels, excluded = imported.labels, imported.excluded
        target = self.weak if into == "weak" else self.hard
        region = target[r0:r1, c0:c1]  # a view: the session's map (and a layer showing it) changes
        self._last_import = (into, box, region.copy())
        if into == "weak":
            region[labels > 0] = labels[labels > 0]
            region[excluded] = 0
            self.weak_edited(box)
        else:
            region[labels == REGION_TUMOUR] = 1
            region[labels == REGION_FREE] = 0
            region[excluded] = NO_OPINION
            self._reapply_corrections(box)
        return imported.summary

    @property
    def can_undo_import(self) -> bool:
        """True when the last import can still be taken back (:meth:`undo_import`)."""
        return self._last_import is not None

    def undo_import(self) -> str:
        """Put back what the last :meth:`apply_import` changed (weak labels or corrections, exactly as
        they were inside its box); return which it was. Edits made in that box since are undone too."""
        if self._last_import is None:
            raise InputError("there is no import to undo")
        into, (r0, c0, r1, c1), before = self._last_import
        self._last_import = None
        if into == "weak":
            assert self.weak is not None
            self.weak[r0:r1, c0:c1] = before
            self.weak_edited((r0, c0, r1, c1))
        else:
            assert self.hard is not None
            self.hard[r0:r1, c0:c1] = before
            self._reapply_corrections((r0, c0, r1, c1))
        return into

    def _reapply_corrections(self, box: tuple[int, int, int, int]) -> None:
        """The corrections changed inside ``box`` other than by painting in a mask: rebuild every stage's
        mask there (from its map cropped with :func:`mask_halo` around the box, which gives the whole
        map's mask exactly), so an import or its undo costs the box, not the slide."""
        assert self.tissue is not None and self.hard is not None
        r0, c0, r1, c1 = box
        rows, cols = self.tissue.shape
        halo = mask_halo()
        h0, w0, h1, w1 = max(0, r0 - halo), max(0, c0 - halo), min(rows, r1 + halo), min(cols, c1 + halo)
        for stage, probability in self.probabilities.items():
            base = mask_from_probability(probability[h0:h1, w0:w1], self.tissue[h0:h1, w0:w1])
            mask = self.masks[stage].copy()
            mask[r0:r1, c0:c1] = apply_corrections(
                base[r0 - h0 : r1 - h0, c0 - w0 : c1 - w0], self.hard[r0:r1, c0:c1]
            )
            self.masks[stage] = mask

    def bag_counts(self) -> tuple[int, int]:
        """``(positive, negative)`` bags (tiles) the current weak labels give, recounted over the whole
        map (also after writes to :attr:`weak` nobody announced)."""
        return self.weak_edited()

    def weak_edited(self, box: tuple[int, int, int, int] | None = None) -> tuple[int, int]:
        """The weak labels changed inside ``box`` (``(row0, col0, row1, col1)``, end exclusive; None:
        anywhere): recount only the tiles under it and return ``(positive, negative)`` bags. A brush
        stroke costs the tiles it touches, not the slide."""
        if self.work is None or self.weak is None or self._bag_counter is None:
            return 0, 0
        self._bag_counter.update(self.weak, box)
        return self._bag_counter.counts()

    @property
    def bags(self) -> tuple[int, int]:
        """``(positive, negative)`` bags as last counted (no recount)."""
        return (0, 0) if self._bag_counter is None else self._bag_counter.counts()

    def bag_labels(self) -> BagLabels | None:
        """Every tile's bag label as last counted (positive, negative, ignored), or None before
        :meth:`adopt`."""
        return None if self._bag_counter is None else self._bag_counter.labels()

    def set_bag_rule(self, name: str) -> None:
        """Count bags by the rule ``name`` from now on (``"scribbles"`` or ``"regions"``, see
        :mod:`~napari_milkd.core.session.weak_labels`); the project remembers it. The weak labels do
        not change, only which tiles they make bags."""
        self.bag_rule = weak_bag_rule(name)
        self._rule_given = True
        if self._bag_counter is not None:
            self._bag_counter.use_rule(self.bag_rule)
            self._save_settings()

    # --- training ------------------------------------------------------------------------------------

    def checkpoint(self, stage: str) -> Path:
        """Where ``stage``'s model is (or will be) saved."""
        return self.project.checkpoints / f"{stage}.pt"

    def has_model(self, stage: str) -> bool:
        """True when ``stage`` has a checkpoint in the project."""
        return self.checkpoint(stage).exists()

    def train_job(
        self, stage: str, config: TrainConfig, *, resume: bool = True
    ) -> Generator[JobEvent, None, StageOutput]:
        """The job that trains ``stage`` on the current labels and predicts the slide (see
        :func:`~napari_milkd.core.session.jobs.slide_stage_job`). It works on copies made now, so it may
        run in a worker thread; hand its result to :meth:`accept`. Raises :class:`InputError` at once
        when a kind of bag is missing or the student has no teacher."""
        if stage not in STAGES:
            raise InputError(f"unknown stage {stage!r}; choose teacher or student")
        work = self._require_work()
        assert self.weak is not None and self.hard is not None
        pos, neg = self.bag_counts()
        if not (pos and neg):
            kind = "positive ('contains tumour')" if not pos else "negative ('tumour-free')"
            raise InputError(f"cannot train without {kind} bags: paint or import some first")
        if stage == "student" and not self.has_model("teacher"):
            raise InputError("train the teacher first")
        self._keep_before_replacing((stage,), f"before training the {stage} again")
        self.training_settings = {name: getattr(config, name) for name in TRAINING_SETTINGS}
        self.save()
        self._save_settings()  # a reopened project shows the same backbone and epochs
        if config.size != work.grid.tile:
            config = replace(config, size=work.grid.tile)  # the model sees the session's tiles
        return slide_stage_job(
            stage,
            self.slide_path,
            self.info.mpp,
            work,
            self.weak.copy(),
            config,
            self.project.checkpoints,
            hard_labels=self.hard.copy() if stage == "student" else None,
            teacher_checkpoint=self.checkpoint("teacher") if stage == "student" else None,
            resume=resume,
            card=slide_provenance([self.slide_path], sample_only=is_sample_slide(self.slide_path)),
            bag_rule=self.bag_rule,
        )

    def accept(self, output: StageOutput) -> np.ndarray:
        """Take a finished job's map: store and save it, rebuild the stage's mask with the corrections
        applied; return that mask."""
        return self.take(self.accept_job(output)())

    def accept_job(self, output: StageOutput) -> Callable[[], AcceptedMap]:
        """:meth:`accept` in two halves: checks now, and returns the heavy half (save the map as float16,
        build the mask, read the model card) as a call that works on copies and may run in a worker
        thread; hand its result to :meth:`take`."""
        self._require_work()
        self._require_lock()
        assert self.tissue is not None and self.hard is not None
        tissue, hard, meta = self.tissue, self.hard.copy(), self._geometry_meta()

        def job() -> AcceptedMap:
            probability = np.asarray(output.probability, np.float32)
            self.project.save_array(f"{output.stage}_probability", probability.astype(np.float16), **meta)
            mask = apply_corrections(mask_from_probability(probability, tissue), hard)
            return AcceptedMap(output, probability, mask, hard, self.describe_model(output.stage))

        return job

    def take(self, accepted: AcceptedMap) -> np.ndarray:
        """Make a map :meth:`accept_job` prepared the stage's (corrections made meanwhile applied too);
        return its mask."""
        assert self.hard is not None
        stage = accepted.output.stage
        self.probabilities[stage] = accepted.probability
        mask = accepted.mask
        if not np.array_equal(accepted.hard, self.hard):  # corrected while the map was saved
            mask = apply_corrections(mask, self.hard)
        self.masks[stage] = mask
        self.stage_metrics[stage] = _metrics_of(accepted.output)
        with contextlib.suppress(OSError):  # the metrics are a convenience of the round list
            self._save_settings()
        return mask

    def train(
        self,
        stage: str,
        config: TrainConfig,
        *,
        resume: bool = True,
        on_event: Callable[[Any], None] | None = None,
    ) -> StageOutput:
        """Train ``stage`` and take its map, in one call (headless use); ``on_event`` sees every event."""
        output = drain(self.train_job(stage, config, resume=resume), on_event)
        self.accept(output)
        return output

    def describe_model(self, stage: str) -> str | None:
        """One line from ``stage``'s model card (what it was trained on, spec, epochs, validation; a
        second line warns when it was trained only on the synthetic sample), or None without a model."""
        from napari_milkd.core.engine.card import describe_model
        from napari_milkd.core.engine.checkpoint import load_checkpoint

        if not self.has_model(stage):
            return None
        try:
            return describe_model(load_checkpoint(self.checkpoint(stage)))
        except MilkdError:
            return None  # a damaged checkpoint says so where it is loaded for work

    def promote_student(self) -> None:
        """Next round, first half: the student (its model and map) becomes the teacher."""
        if not self.has_model("student"):
            raise InputError("distil a student first")
        self._require_lock()
        self._keep_before_replacing(STAGES, "next round")
        with atomic_path(self.checkpoint("teacher")) as tmp:
            shutil.copyfile(self.checkpoint("student"), tmp)
        if "student" in self.probabilities:
            self._set_probability("teacher", self.probabilities["student"])
            self.project.save_array(
                "teacher_probability",
                self.probabilities["teacher"].astype(np.float16),
                **self._geometry_meta(),
            )
        self.stage_metrics["teacher"] = {**self.stage_metrics.get("student", {}), "from": "student"}
        self.round += 1
        self._save_settings()

    def use_run_job(
        self, run: str | Path, config: TrainConfig
    ) -> Generator[JobEvent, None, list[StageOutput]]:
        """Bring the models of a run trained elsewhere (``milkd train --slides``, a slide group's
        ``checkpoints/``) into this slide: each of its ``teacher.pt`` / ``student.pt`` becomes the
        session's and predicts this slide (``config`` gives device and batch size).

        Checks now, and changes nothing when it refuses: a folder without models, or a model that does not
        record its µm/px or was trained at another µm/px or tile size than this slide was prepared at (it
        would be fed the wrong pixels; prepare the slide at the model's). Then the current models are kept
        as a round and the run's are copied into the project; the returned job (worker-safe: it reads the
        copies) yields the maps filling in and returns one :class:`StageOutput` per model, for
        :meth:`accept_job` / :meth:`take`. Corrections stay and apply to the new masks."""
        from napari_milkd.core.engine.checkpoint import load_checkpoint
        from napari_milkd.core.engine.spec import checkpoint_spec

        work = self._require_work()
        self._require_lock()
        folder = Path(run)
        found = {stage: folder / f"{stage}.pt" for stage in STAGES if (folder / f"{stage}.pt").is_file()}
        if not found:
            raise InputError(f"no teacher.pt or student.pt in {folder}")
        states = {stage: load_checkpoint(path) for stage, path in found.items()}
        for stage, state in states.items():
            spec = checkpoint_spec(state)
            if spec is None or spec.mpp is None:
                raise InputError(f"{found[stage].name} does not record the µm/px it was trained at")
            if abs(spec.mpp - work.grid.mpp) > 1e-3 * work.grid.mpp or spec.tile != work.grid.tile:
                raise InputError(
                    f"{found[stage].name} was trained at {spec.mpp:g} µm/px with {spec.tile} px tiles; "
                    f"prepare the slide at that resolution and tile size (now {work.grid.mpp:g} µm/px, "
                    f"{work.grid.tile} px)"
                )
        self._keep_before_replacing(tuple(found), f"before using the run {folder.name}")
        for stage, path in found.items():
            with atomic_path(self.checkpoint(stage)) as tmp:
                shutil.copyfile(path, tmp)
        bags = self.bags
        results = {
            stage: TrainResult(
                stage=stage,
                epochs=int(state.get("epoch") or 0),
                best_epoch=int(state.get("best_epoch") or 0),
                best_score=state.get("best_score"),
                checkpoint=str(self.checkpoint(stage)),
            )
            for stage, state in states.items()
        }
        return self._predict_models(results, config, bags)

    def _predict_models(
        self, results: dict[str, TrainResult], config: TrainConfig, bags: tuple[int, int]
    ) -> Generator[JobEvent, None, list[StageOutput]]:
        work = self._require_work()
        source = open_slide(self.slide_path, mpp=self.slide_mpp)
        outputs = []
        try:
            for stage, result in results.items():
                probability = yield from predict_stage_map(
                    stage, self.checkpoint(stage), source, work, config
                )
                outputs.append(StageOutput(stage, probability, result, *bags))
        finally:
            source.close()
        return outputs

    def next_round_job(self, config: TrainConfig) -> Generator[JobEvent, None, StageOutput]:
        """Next round: the student becomes the teacher and a new student is distilled from it (the
        corrections made so far count as ground truth)."""
        self.promote_student()
        return self.train_job("student", config, resume=False)

    # --- rounds --------------------------------------------------------------------------------------

    def rounds(self) -> list[RoundInfo]:
        """The rounds kept in the project, oldest first (number, date, what each holds: see
        :class:`~napari_milkd.core.session.rounds.RoundInfo`)."""
        return list_rounds(self.project.root)

    def _array_file(self, name: str) -> Path:
        return self.project.root / "arrays" / f"{name}.npz"

    def _state_files(self) -> dict[str, Path]:
        """The files of the current state a round keeps: each stage's checkpoint and probability map."""
        files: dict[str, Path] = {}
        for stage in STAGES:
            for path in (self.checkpoint(stage), self._array_file(f"{stage}_probability")):
                if path.exists():
                    files[path.name] = path
        return files

    def _finished(self, stage: str) -> bool:
        """True when ``stage``'s checkpoint is the one that made its saved map (a finished model): the map
        was saved after the checkpoint (a cancelled run leaves a newer, unfinished checkpoint)."""
        model, prob = (
            fingerprint(self.checkpoint(stage)),
            fingerprint(self._array_file(f"{stage}_probability")),
        )
        return model is not None and prob is not None and prob[1] >= model[1]

    def _unkept(self, stages: tuple[str, ...]) -> bool:
        """True when one of ``stages`` has a finished model that no kept round holds."""
        return any(
            self._finished(stage)
            and fingerprint(self.checkpoint(stage))
            not in kept_fingerprints(self.project.root, self.checkpoint(stage).name)
            for stage in stages
        )

    def _round_record(self, reason: str, masks: dict[str, np.ndarray]) -> dict[str, Any]:
        """``round.json``'s content for the current state (the files are named by :meth:`_state_files`)."""
        try:
            settings = self.project.load_settings()
        except MilkdError:
            settings = {}
        stages: dict[str, Any] = {}
        for stage in STAGES:
            model, prob = self.checkpoint(stage), self._array_file(f"{stage}_probability")
            if not (model.exists() or prob.exists()):
                continue
            stages[stage] = {
                "checkpoint": model.name if model.exists() else None,
                "probability": prob.name if prob.exists() else None,
                "mask": f"{stage}_mask.npz" if stage in masks else None,
                "finished": self._finished(stage),
                "metrics": self.stage_metrics.get(stage, {}),
            }
        dice = mask_dice(masks["teacher"], masks["student"]) if all(s in masks for s in STAGES) else None
        return {
            "reason": reason,
            "session_round": self.round,
            "slide": self.info.path,
            "corrected_pixels": self.corrected_pixels,
            "dice": dice,
            "stages": stages,
            "settings": settings,
        }

    def keep_round(self, reason: str = "kept") -> RoundInfo | None:
        """Keep the current models, maps and masks as a new round now (atomic: a crash leaves no half
        round); None when there is no model or map to keep."""
        self._require_work()
        self._require_lock()
        files = self._state_files()
        if not files:
            return None
        masks = {stage: mask for stage, mask in self.masks.items() if stage in STAGES}
        return archive_round(
            self.project.root, files=files, masks=masks, record=self._round_record(reason, masks)
        )

    def _keep_before_replacing(self, stages: tuple[str, ...], reason: str) -> RoundInfo | None:
        """Keep the current state as a round before a finished model of ``stages`` is replaced, unless
        every such model is already kept."""
        if self.work is None or not self._unkept(stages):
            return None
        return self.keep_round(reason)

    def restore_round(self, number: int) -> RestoredRound:
        """Go back to round ``number``: its models, maps and masks become the current teacher/student.
        The current state is kept as a new round first (unless it is already kept), so going back can be
        undone the same way. Corrections (hard labels) are the pathologist's work and are never rolled
        back: the restored masks show the corrections made since, too."""
        return self.take_restored(self.restore_round_job(number)())

    def restore_round_job(self, number: int) -> Callable[[], RestoredRound]:
        """:meth:`restore_round` in two halves: checks now (round ``number`` kept, the project ours) and
        returns the file work (keep the current state, put the round's checkpoints and maps in place, read
        them back, build the masks with the current corrections) as a call on copies that may run in a
        worker thread; hand its result to :meth:`take_restored`. Stages the round has no model of are
        removed from the project (they are in the round kept just before)."""
        work = self._require_work()
        self._require_lock()
        assert self.tissue is not None and self.hard is not None
        chosen = read_round(self.project.root, number)
        if not (chosen.stages or chosen.maps):
            raise InputError(f"round {number} holds no model to go back to")
        files = self._state_files()
        masks = {stage: mask for stage, mask in self.masks.items() if stage in STAGES}
        # The current state is kept unless each of its files is already in a round.
        keep = any(fingerprint(p) not in kept_fingerprints(self.project.root, n) for n, p in files.items())
        record = self._round_record(f"before going back to round {number}", masks) if keep else {}
        tissue, hard, root, shape = self.tissue, self.hard.copy(), self.project.root, work.shape
        targets = {
            stage: (self.checkpoint(stage), self._array_file(f"{stage}_probability")) for stage in STAGES
        }

        def job() -> RestoredRound:
            kept_as = archive_round(root, files=files, masks=masks, record=record) if keep else None
            probabilities: dict[str, np.ndarray] = {}
            restored_masks: dict[str, np.ndarray] = {}
            for stage, (model, prob) in targets.items():
                for have, source, target in (
                    (stage in chosen.stages, chosen.checkpoint(stage), model),
                    (stage in chosen.maps, chosen.probability(stage), prob),
                ):
                    if have:
                        replace_with(source, target)
                    else:
                        try:
                            target.unlink(missing_ok=True)
                        except OSError as exc:
                            raise WriteError(f"could not remove {target}: {exc.strerror or exc}") from exc
                if stage not in chosen.maps:
                    continue
                probability = load_probability(chosen.probability(stage))
                base: np.ndarray | None = None
                if chosen.mask_path(stage).exists():
                    base = load_mask(chosen.mask_path(stage))
                if probability.shape != shape or base is None or base.shape != shape:
                    from skimage.transform import resize

                    if probability.shape != shape:  # the round was made at another working resolution
                        probability = resize(probability, shape, order=1, preserve_range=True).astype(
                            np.float32
                        )
                    base = mask_from_probability(probability, tissue)
                probabilities[stage] = probability
                restored_masks[stage] = apply_corrections(base, hard)
            return RestoredRound(
                number=number,
                kept_as=kept_as,
                stages=chosen.stages,
                probabilities=probabilities,
                masks=restored_masks,
                hard=hard,
                session_round=chosen.session_round,
                metrics=chosen.metrics,
            )

        return job

    def take_restored(self, restored: RestoredRound) -> RestoredRound:
        """Make a round :meth:`restore_round_job` read back the session's maps and masks (corrections
        made meanwhile applied too) and its round counter; return it."""
        assert self.hard is not None
        for stage in STAGES:
            if stage in restored.probabilities:
                self.probabilities[stage] = restored.probabilities[stage]
                mask = restored.masks[stage]
                if not np.array_equal(restored.hard, self.hard):  # corrected while the round was read
                    mask = apply_corrections(mask, self.hard)
                self.masks[stage] = mask
            else:
                self.probabilities.pop(stage, None)
                self.masks.pop(stage, None)
        self.stage_metrics = {s: dict(m) for s, m in restored.metrics.items() if s in restored.stages}
        self.round = restored.session_round
        self._save_settings()
        return restored

    # --- masks and corrections -----------------------------------------------------------------------

    def _set_probability(self, stage: str, probability: np.ndarray) -> np.ndarray:
        assert self.tissue is not None and self.hard is not None
        self.probabilities[stage] = probability
        mask = apply_corrections(mask_from_probability(probability, self.tissue), self.hard)
        self.masks[stage] = mask
        return mask

    def mask(self, stage: str) -> np.ndarray | None:
        """``stage``'s current mask (corrections applied, edits included), or None before training."""
        return self.masks.get(stage)

    def record_edit(self, stage: str, edited: np.ndarray) -> int:
        """The user edited ``stage``'s mask into ``edited``: every pixel that changed becomes ground
        truth (hard label) for the next distillation. Returns the number of corrected pixels."""
        if stage not in self.masks or self.hard is None:
            raise InputError(f"there is no {stage} mask to edit yet")
        edited = np.asarray(edited)
        self.hard = record_corrections(self.hard, self.masks[stage], edited)
        self.masks[stage] = edited.astype(np.uint8, copy=True)
        return self.corrected_pixels

    @property
    def corrected_pixels(self) -> int:
        """Pixels the user has corrected so far."""
        return 0 if self.hard is None else int((self.hard != NO_OPINION).sum())

    def disagreement(self) -> np.ndarray | None:
        """``|teacher − student|`` probability, once both exist."""
        if not all(stage in self.probabilities for stage in STAGES):
            return None
        return np.abs(self.probabilities["teacher"] - self.probabilities["student"])

    # --- review and export ---------------------------------------------------------------------------

    def region_scores(self) -> np.ndarray:
        """Per tile: how much it needs a look (teacher/student disagreement; with one model, its
        uncertainty), summed over the tile's tissue only and divided by the tile's area (so a tile that is
        mostly glass ranks low); reviewed tiles score −1."""
        work = self._require_work()
        if not self.probabilities:
            raise InputError("train a model first")
        score_map = self.disagreement()
        if score_map is None:
            prob = next(iter(self.probabilities.values()))
            score_map = 0.5 - np.abs(prob - 0.5)
        # Only tissue counts: glass at the tissue border is where maps differ most and matters least.
        score_map = np.where(self.tissue, score_map, 0).astype(np.float32)
        index = np.arange(len(work.grid))
        scores = tile_crops(score_map, work, index).mean(axis=(1, 2))
        scores[list(self.reviewed)] = -1
        return scores

    def next_region(self) -> int | None:
        """The unreviewed tile that needs a look most (marked reviewed), or None when all were seen."""
        scores = self.region_scores()
        best = int(np.argmax(scores))
        if scores[best] < 0:
            return None
        self.reviewed.add(best)
        return best

    def region_bounds_l0(self, tile: int) -> tuple[float, float, float, float]:
        """``(y0, x0, y1, x1)`` of tile ``tile`` in level-0 pixels."""
        return self._require_work().grid.bounds_l0(tile)

    def export(self, stage: str, fmt: str, path: str | Path) -> Path:
        """Write ``stage``'s current mask as ``"geojson"`` (QuPath), ``"asap"`` (XML) or ``"ome-zarr"``
        (labels) to ``path``, with the one export policy (:func:`~napari_milkd.core.inference.masks.
        mask_polygons`); return the path written."""
        return self.export_job(stage, fmt, path)()

    def export_job(self, stage: str, fmt: str, path: str | Path) -> Callable[[], Path]:
        """:meth:`export` in two halves: checks now (errors at once) and returns the writing as a call on
        the mask as it is now, which may run in a worker thread."""
        from napari_milkd.core.annotations import write_asap_xml, write_geojson, write_ome_zarr_labels

        work = self._require_work()
        mask = self.masks.get(stage)
        if mask is None:
            raise InputError(f"there is no {stage} mask to export yet")
        if fmt not in EXPORT_FORMATS:
            raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        target, mpp, offset, downsample = Path(path), self.info.mpp, self.info.offset_l0, work.downsample

        def write() -> Path:
            if fmt == "ome-zarr":
                labels = (mask > 0).astype(np.uint8)
                write_ome_zarr_labels(target, labels, name=stage, mpp=mpp, downsample=downsample)
                return target
            polygons = mask_polygons(mask > 0, downsample, mpp)
            if fmt == "asap":
                write_asap_xml(target, polygons)  # ASAP shows the full level-0 frame: no bounds offset
            else:
                write_geojson(target, polygons, mpp=mpp, offset_l0=offset)
            return target

        return write

    # --- persistence ---------------------------------------------------------------------------------

    def _geometry_meta(self) -> dict[str, float]:
        return {"work_mpp": float(self._require_work().grid.mpp)}

    def save(self) -> None:
        """Write weak labels and corrections to the project folder (atomic). Refused (one-line
        :class:`WriteError`) once the session is closed or a later session took the project."""
        self.save_job()()

    def save_job(self) -> Callable[[], None]:
        """:meth:`save` in two halves: the maps are copied now (milliseconds; the caller's thread) and
        the returned call compresses and writes them (the slow half: any thread, e.g. a worker, so the
        GUI does not wait for an autosave). Saves land in the order they were asked for: a call that
        runs after a newer one has written writes nothing, and :meth:`close` waits for a write in
        progress; one that starts after the close is refused (:class:`WriteError`), like :meth:`save`."""
        if self.work is None:
            return lambda: None
        self._require_lock()
        maps = {"weak_labels": self.weak, "corrections": self.hard}
        copies = {name: data.copy() for name, data in maps.items() if data is not None}
        meta = self._geometry_meta()
        with self._save_guard:
            self._save_seq += 1
            seq = self._save_seq

        def write() -> None:
            with self._save_guard:
                if seq <= self._written_seq:
                    return  # a newer snapshot is on disk already
                self._require_lock()
                for name, data in copies.items():
                    self.project.save_array(name, data, **meta)
                self._written_seq = seq

        return write
