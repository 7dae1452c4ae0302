"""Several prepared slides, one model: the widget's slide group ("Train on all prepared slides").

Owns training one teacher (or one student, from the group's teacher) on the weak labels and corrections
of several :class:`~napari_milkd.core.session.slide_session.SlideSession` s at once, then predicting
every slide's map, and the group's folder ``<projects root>/groups/<name>-<hash>.milkd/``:

* ``checkpoints/teacher.pt``, ``checkpoints/student.pt``: the group's models (each slide's project gets
  a copy, so its rounds, exports and *Next round* work as after a one-slide training);
* ``annotations/<slide>.geojson``: each slide's weak labels as QuPath regions ("Tumor" = contains
  tumour, "Normal" = tumour-free: the default class map reads them back as positive and negative);
* ``manifest.csv``: the slides in the ``milkd train --slides`` format (``slide``, ``annotations``,
  ``mpp`` where the slide needed one, ``split``), so ``milkd train --slides <group>/manifest.csv`` trains
  the same bags headless (corrections are not in it: they are pixels, not regions).

The bags are those of :func:`~napari_milkd.core.session.cohort_training.read_slide_bags` (the headless
path's: at most ``max_bags_per_slide`` per slide, grouped by slide), each slide's labels taken with its
session's bag rule at its own working geometry; every slide must share the working µm/px and tile
size. Validation is by slide (:func:`~napari_milkd.core.session.cohort_training.split_by_slide`) with
three or more slides; with two, holding one out would train on the other alone, so the bags of each
slide are split instead (said in :attr:`GroupOutput.how`).

The reverse, a ``milkd train --slides`` manifest opened as a group (:func:`read_manifest_group`,
:func:`open_manifest_slides`, :func:`open_manifest_group`): each row's slide becomes a prepared session
(its project restored, opened under the manifest's µm/px rule: the ``mpp`` column only fills a slide that
records none), and its weak labels become exactly what ``milkd train --slides`` makes of the row
(:func:`~napari_milkd.core.session.cohort_training.slide_regions`: the default class map or the one
given, exclusions erased, ``label=negative`` = all tissue tumour-free), counted with the headless path's
bag rule (:data:`~napari_milkd.core.session.weak_labels.REGIONS_RULE`). They *replace* the weak labels
the project had, as one import (:meth:`SlideSession.undo_import` takes it back). The ``split`` column is
the headless trainer's; a group trained in the widget makes its own split. A group's own manifest opens
back as the same group (same slides, same weak labels: its GeoJSONs follow the map's pixel edges).

Threading as in :mod:`.slide_session`: :func:`group_train_job` checks and copies on the caller's thread
and returns a job generator (events: :class:`~.labels.ReadingTiles`, training events, map previews of
one slide, the other slides' prediction progress) that may run in a worker; hand its
:class:`GroupOutput` to each session (:func:`accept_group`, or ``session.accept_job(output.of(path))`` /
``session.take`` as the widget does). Qt-free; torch only through the engine.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import shutil
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_milkd.core.atomic import atomic_path
from napari_milkd.core.engine.card import slide_provenance
from napari_milkd.core.engine.config import TrainConfig, TrainResult
from napari_milkd.core.engine.datasets import BagSet
from napari_milkd.core.engine.spec import ModelSpec
from napari_milkd.core.errors import InputError, WriteError
from napari_milkd.core.progress import relay
from napari_milkd.core.session.cohort_manifest import TrainingSlide, read_training_manifest, slide_mpp
from napari_milkd.core.session.cohort_training import (
    DEFAULT_MAX_BAGS_PER_SLIDE,
    SlideBags,
    read_slide_bags,
    slide_regions,
    split_by_slide,
)
from napari_milkd.core.session.jobs import StageOutput, predict_stage_map, train_stage_job
from napari_milkd.core.session.labels import ReadingTiles
from napari_milkd.core.session.project import Project, project_name, projects_root
from napari_milkd.core.session.slide_session import ImportedRegions, ImportSummary, SlideSession
from napari_milkd.core.session.weak_labels import (
    REGION_FREE,
    REGION_TUMOUR,
    REGIONS_RULE,
    BagRule,
    bag_labels_from_regions,
)
from napari_milkd.core.slides.geometry import SlideWork
from napari_milkd.core.slides.sample import is_sample_slide
from napari_milkd.core.slides.slide import open_slide, resolve_slide_path

if TYPE_CHECKING:
    from napari_milkd.core.session.slide_session import AcceptedMap

#: Folder of the groups inside the projects folder.
GROUPS_FOLDER = "groups"
#: The group's manifest (``milkd train --slides`` format).
MANIFEST_NAME = "manifest.csv"
#: QuPath classes the weak labels are exported with (default class map: positive / negative).
TUMOUR_CLASS = "Tumor"
FREE_CLASS = "Normal"


@dataclass(frozen=True)
class GroupMember:
    """A copy of what one prepared session gives the group: its slide (``slide_mpp``: the µm/px it is
    opened with when the file lacks one), level-0 µm/px and bounds offset, working geometry, weak labels
    and corrections (None for a teacher), bag rule, and its project's checkpoints folder."""

    slide_path: str
    slide_mpp: float | None
    mpp: float
    offset_l0: tuple[float, float]
    work: SlideWork
    regions: np.ndarray
    hard: np.ndarray | None
    rule: BagRule
    checkpoints: Path

    @property
    def name(self) -> str:
        """The slide's file name."""
        return Path(self.slide_path).name


@dataclass(frozen=True)
class GroupOutput:
    """What a group job returns: the stage, one :class:`StageOutput` per slide, labelled or predicted
    only (its map and its bag counts; ``slides`` in the same order), the training result, the group
    folder, and the validation split (slide names on each side, and how it was made)."""

    stage: str
    slides: tuple[str, ...]
    outputs: tuple[StageOutput, ...]
    result: TrainResult
    folder: Path
    train_slides: tuple[str, ...]
    val_slides: tuple[str, ...]
    how: str

    def of(self, slide_path: str) -> StageOutput:
        """The output of the slide at ``slide_path``."""
        return self.outputs[self.slides.index(str(slide_path))]


def group_folder(slide_paths: Sequence[str | Path], root: str | Path | None = None) -> Path:
    """``<root>/groups/<first slide>+<n-1>-<hash>.milkd``: one folder per set of slides, in any order (the
    first by sorted absolute path; the hash is of those paths; ``root`` defaults to
    :func:`~.project.projects_root`)."""
    paths = sorted(str(Path(p).expanduser().resolve()) for p in slide_paths)
    if not paths:
        raise InputError("a slide group needs slides")
    key = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:12]
    first = re.sub(r"[^\w.-]+", "_", Path(paths[0]).stem)[:40]
    base = Path(root).expanduser() if root is not None else projects_root()
    return base / GROUPS_FOLDER / f"{first}+{len(paths) - 1}-{key}.milkd"


def member_of(session: SlideSession, *, with_corrections: bool) -> GroupMember:
    """A :class:`GroupMember` from a prepared session (copies of its maps)."""
    if session.work is None or session.weak is None or session.hard is None:
        raise InputError(f"prepare {Path(session.slide_path).name} first")
    assert session.info.mpp is not None
    return GroupMember(
        slide_path=session.slide_path,
        slide_mpp=session.slide_mpp,
        mpp=float(session.info.mpp),
        offset_l0=(float(session.info.offset_l0[0]), float(session.info.offset_l0[1])),
        work=session.work,
        regions=session.weak.copy(),
        hard=session.hard.copy() if with_corrections else None,
        rule=getattr(session, "bag_rule", REGIONS_RULE),
        checkpoints=session.project.checkpoints,
    )


def group_train_job(
    sessions: Sequence[SlideSession],
    stage: str,
    config: TrainConfig,
    *,
    root: str | Path | None = None,
    resume: bool = True,
    preview: str | None = None,
    max_bags_per_slide: int = DEFAULT_MAX_BAGS_PER_SLIDE,
) -> Generator[Any, None, GroupOutput]:
    """The job that trains ``stage`` on every session of ``sessions`` with weak labels, then predicts
    each slide (see :func:`group_stage_job`), with the checks made now (one-line :class:`InputError`):
    at least two prepared slides, one working µm/px and tile size, positive and negative bags overall, a
    student only after the group's teacher. Slides without any bag are predicted but give no bags (the
    group, its folder and its manifest are the labelled slides). Each session keeps its current
    finished model as a round first and saves its edits, as for a one-slide training.
    ``root`` is the projects folder the group folder goes in; ``preview`` the slide whose map is shown
    filling (:class:`~.jobs.MapPreview` events)."""
    if stage not in ("teacher", "student"):
        raise InputError(f"unknown stage {stage!r}; choose teacher or student")
    prepared = [s for s in sessions if s.work is not None]
    if len(prepared) < 2:
        raise InputError("prepare at least two slides to train on all of them")
    first = prepared[0].work
    assert first is not None
    for session in prepared[1:]:
        work = session.work
        assert work is not None
        if not math.isclose(work.grid.mpp, first.grid.mpp, rel_tol=1e-3) or work.grid.tile != first.grid.tile:
            raise InputError(
                f"{Path(session.slide_path).name} was prepared at {work.grid.mpp:g} µm/px with "
                f"{work.grid.tile} px tiles, {Path(prepared[0].slide_path).name} at {first.grid.mpp:g} µm/px "
                f"with {first.grid.tile} px tiles: prepare them all with the same settings"
            )
    labelled = [s for s in prepared if sum(s.bag_counts())]
    positive = sum(s.bags[0] for s in labelled)
    negative = sum(s.bags[1] for s in labelled)
    if not (positive and negative):
        kind = "positive ('contains tumour')" if not positive else "negative ('tumour-free')"
        raise InputError(f"the prepared slides give no {kind} bags: paint or import some first")
    folder = group_folder([s.slide_path for s in labelled], root)
    if stage == "student" and not (folder / "checkpoints" / "teacher.pt").exists():
        raise InputError("train the teacher on these slides first")
    for session in prepared:
        # As SlideSession.train_job: a finished model about to be replaced is kept as a round first.
        session._keep_before_replacing((stage,), f"before training the {stage} on a group of slides")
        session.save()
    if config.size != first.grid.tile:
        config = replace(config, size=first.grid.tile)
    members = [member_of(s, with_corrections=stage == "student") for s in prepared]
    return group_stage_job(
        stage,
        members,
        config,
        folder,
        resume=resume,
        preview=preview,
        max_bags_per_slide=max_bags_per_slide,
    )


def accept_group(sessions: Sequence[SlideSession], output: GroupOutput) -> list[AcceptedMap]:
    """Hand a finished group job's maps to their sessions (each saves its map and makes its mask), in
    one call (headless use); return what each took. Sessions not in the group are left alone."""
    taken = []
    for session in sessions:
        if session.slide_path in output.slides:
            accepted = session.accept_job(output.of(session.slide_path))()
            session.take(accepted)
            taken.append(accepted)
    return taken


def group_stage_job(
    stage: str,
    members: Sequence[GroupMember],
    config: TrainConfig,
    folder: str | Path,
    *,
    resume: bool = True,
    preview: str | None = None,
    max_bags_per_slide: int = DEFAULT_MAX_BAGS_PER_SLIDE,
) -> Generator[Any, None, GroupOutput]:
    """Train ``stage`` once on the bags of every member, then predict each member's working map.

    Writes ``folder``'s weak-label GeoJSONs and ``manifest.csv`` (with the split made), trains into
    ``folder/checkpoints/<stage>.pt`` (resumed when unfinished and ``resume``; a student distils from
    ``folder/checkpoints/teacher.pt``), copies the model into each member's checkpoints folder and
    predicts each slide. ``config.size`` must be the members' tile size.
    """
    folder = Path(folder)
    checkpoint = folder / "checkpoints" / f"{stage}.pt"
    work = members[0].work
    spec = ModelSpec.for_config(config, mpp=work.grid.mpp)
    per_slide: list[SlideBags] = []
    counts: list[tuple[int, int]] = []
    for k, member in enumerate(members):
        labels = bag_labels_from_regions(
            member.work.grid, member.regions, member.work.downsample, rule=member.rule
        )
        row = TrainingSlide(Path(member.slide_path), None, False, member.slide_mpp, None, k + 2)
        counts.append((labels.n_positive, labels.n_negative))
        if not (labels.n_positive or labels.n_negative):  # not labelled: predicted only
            per_slide.append(SlideBags(row, None, 0, 0))
            continue
        source = open_slide(member.slide_path, mpp=member.slide_mpp)
        try:
            bags = yield from relay(
                read_slide_bags(
                    source,
                    member.work,
                    labels.labels,
                    name=member.name,
                    group=member.slide_path,
                    max_bags=max_bags_per_slide,
                    rng=np.random.default_rng([config.seed, k]),
                    hard_labels=member.hard,
                ),
                lambda e, name=member.name: ReadingTiles(stage, e.done, e.total, f"reading {name}"),
            )
        finally:
            source.close()
        per_slide.append(SlideBags(row, bags, labels.n_positive, labels.n_negative))
    train, val, train_slides, val_slides, how = _split(per_slide, config)
    labelled = [m for m, c in zip(members, counts, strict=True) if sum(c)]
    write_group_manifest(folder, labelled, val_slides=val_slides if how.startswith("whole") else ())
    card = slide_provenance(
        [m.slide_path for m in labelled], sample_only=all(is_sample_slide(m.slide_path) for m in labelled)
    )
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    result = yield from train_stage_job(
        stage,
        train,
        val,
        config,
        checkpoint,
        spec=spec,
        teacher_checkpoint=folder / "checkpoints" / "teacher.pt" if stage == "student" else None,
        resume=resume,
        card=card,
    )
    outputs = []
    for member, (n_pos, n_neg) in zip(members, counts, strict=True):
        _copy_model(checkpoint, member.checkpoints / f"{stage}.pt")
        source = open_slide(member.slide_path, mpp=member.slide_mpp)
        try:
            probability = yield from predict_stage_map(
                stage,
                checkpoint,
                source,
                member.work,
                config,
                preview=member.slide_path == preview,
                name=member.name,
            )
        finally:
            source.close()
        outputs.append(StageOutput(stage, probability, result, n_pos, n_neg))
    return GroupOutput(
        stage=stage,
        slides=tuple(m.slide_path for m in members),
        outputs=tuple(outputs),
        result=result,
        folder=folder,
        train_slides=tuple(train_slides),
        val_slides=tuple(val_slides),
        how=how,
    )


def _split(
    per_slide: list[SlideBags], config: TrainConfig
) -> tuple[BagSet, BagSet | None, list[str], list[str], str]:
    """Training and validation bags: whole slides held out with three or more slides giving bags (when
    both sides keep both kinds of bag), else the bags of each slide split (both slides train)."""
    given = [s for s in per_slide if s.bags is not None]
    if not given:
        raise InputError("no slide of the group gave any bags")
    names = [s.slide.name for s in given]
    if len(given) >= 3:
        split = split_by_slide(given, config.val_fraction, config.seed)
        val = split.val
        if split.train.n_pos and split.train.n_neg and val is not None and val.n_pos and val.n_neg:
            return split.train, val, split.train_slides, split.val_slides, split.how
    joined = BagSet.concat([s.bags for s in given if s.bags is not None])
    train, val = replace(joined, groups=None).split(config.val_fraction, config.seed)
    how = "bags of every slide on both sides"
    if not (train.n_pos and train.n_neg and val.n_pos and val.n_neg):
        return joined, None, names, [], "none (too few bags to hold out both kinds): the last epoch is kept"
    return train, val, names, names, how


def _copy_model(source: Path, target: Path) -> None:
    """Put the group's model into a slide's project (atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    except OSError as exc:
        raise WriteError(f"could not copy the group's model to {target}: {exc.strerror or exc}") from exc


def write_weak_geojson(path: Path, member: GroupMember) -> int:
    """Write a member's weak labels as QuPath annotations: "contains tumour" as :data:`TUMOUR_CLASS`,
    "tumour-free" as :data:`FREE_CLASS`, outlines along the working map's pixel edges (not simplified,
    so they rasterise back to the same map), in level-0 pixels shifted by the slide's bounds offset.
    Returns the number of regions written."""
    from napari_milkd.core.annotations import Annotation, labels_to_polygons, write_geojson

    polygons = labels_to_polygons(member.regions, member.work.downsample, simplify_px=0)
    annotations = [
        Annotation(polygon, class_name)
        for value, class_name in ((REGION_TUMOUR, TUMOUR_CLASS), (REGION_FREE, FREE_CLASS))
        for polygon in polygons.get(value, [])
    ]
    return write_geojson(path, annotations, mpp=member.mpp, offset_l0=member.offset_l0)


def write_group_manifest(
    folder: Path, members: Sequence[GroupMember], *, val_slides: Sequence[str] = ()
) -> Path:
    """Write each member's weak labels to ``folder/annotations/`` and ``folder/manifest.csv`` listing them
    in the ``milkd train --slides`` format (``val_slides``, by name, get ``split=val`` and the others
    ``train``; no split column when empty); return the manifest's path."""
    annotations = folder / "annotations"
    try:
        annotations.mkdir(parents=True, exist_ok=True)
        rows = []
        for member in members:
            name = Path(project_name(member.slide_path)).stem + ".geojson"
            write_weak_geojson(annotations / name, member)
            row = {
                "slide": str(Path(member.slide_path).resolve()),
                "annotations": f"annotations/{name}",
                "mpp": "" if member.slide_mpp is None else f"{member.slide_mpp:g}",
            }
            if val_slides:
                row["split"] = "val" if member.name in val_slides else "train"
            rows.append(row)
        text = io.StringIO()
        writer = csv.DictWriter(text, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        manifest = folder / MANIFEST_NAME
        with atomic_path(manifest) as tmp:
            Path(tmp).write_text(text.getvalue(), encoding="utf-8")
    except OSError as exc:
        raise WriteError(f"could not write the group's manifest in {folder}: {exc.strerror or exc}") from exc
    return manifest


# --- a ``milkd train --slides`` manifest opened as a group ------------------------------------------


@dataclass(frozen=True)
class ManifestSlide:
    """One row of a training manifest, ready to open: the row, the slide's path as a session and a
    slide layer know it (absolute; a DICOM folder's largest file), the µm/px to open it with (the
    manifest's ``mpp``, only for a slide that records none: :func:`~.cohort_manifest.slide_mpp`) and
    that rule's warning, if any."""

    row: TrainingSlide
    path: str
    slide_mpp: float | None
    warning: str | None

    @property
    def name(self) -> str:
        """The slide's file name."""
        return Path(self.path).name


@dataclass(frozen=True)
class ManifestLabels:
    """What taking a manifest row's weak labels did to a session: weak-label pixels changed (0 when the
    session already had exactly these labels) and the bags they now give."""

    changed: int
    positive: int
    negative: int


@dataclass(frozen=True)
class OpenedSlide:
    """A manifest slide opened as a prepared session: its row, the session (``new``: made and prepared
    here; else a session given in ``held``), its weak labels as ``milkd train --slides`` makes them
    (``regions``), what the project restored, one-line warnings (µm/px rule, unknown classes, skipped
    objects), and ``taken``: the labels already in the session (new sessions), None when the caller still
    has to :func:`take_manifest_labels` (held sessions: their owner's thread does it)."""

    entry: ManifestSlide
    session: SlideSession
    regions: np.ndarray
    new: bool
    restored: tuple[str, ...]
    warnings: tuple[str, ...]
    taken: ManifestLabels | None


def read_manifest_group(manifest: str | Path) -> list[ManifestSlide]:
    """The rows of a ``milkd train --slides`` manifest (checked by
    :func:`~.cohort_manifest.read_training_manifest`), each with the µm/px its slide opens with under the
    one µm/px rule (opens each slide's header; a slide with no µm/px anywhere is a :class:`SlideError`
    telling to fill the ``mpp`` column)."""
    out = []
    for row in read_training_manifest(manifest):
        given, warning = slide_mpp(row.slide, row.mpp)
        path = str(resolve_slide_path(row.slide.expanduser().resolve()))
        out.append(ManifestSlide(row, path, given, warning))
    return out


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def take_manifest_labels(session: SlideSession, regions: np.ndarray) -> ManifestLabels:
    """Make ``regions`` (a manifest row's weak labels at the session's working geometry) the session's
    weak labels, counted with the headless path's rule (:data:`REGIONS_RULE`, remembered by the project):
    they replace what it had, as one import (:meth:`SlideSession.undo_import` takes it back). On the
    thread that owns the session."""
    work = session.work
    if work is None or session.weak is None:
        raise InputError(f"prepare {Path(session.slide_path).name} first")
    if regions.shape != work.shape:
        raise InputError(
            f"{Path(session.slide_path).name} was prepared again while the manifest was read: open it again"
        )
    changed = int(np.count_nonzero(session.weak != regions))
    if session.bag_rule.name != REGIONS_RULE.name:
        session.set_bag_rule(REGIONS_RULE.name)
    rows, cols = work.shape
    summary = ImportSummary(0, ())  # not shown: the manifest's rows are summarised by the caller
    labels = regions.astype(np.uint8, copy=True)
    session.apply_import(ImportedRegions(labels, labels == 0, (0, 0, rows, cols), work.shape, summary))
    positive, negative = session.bags
    return ManifestLabels(changed, positive, negative)


def _manifest_regions(
    entry: ManifestSlide, session: SlideSession, class_map: Mapping[str, str] | None
) -> tuple[np.ndarray, list[str]]:
    """The row's weak-label map at the session's geometry, as ``milkd train --slides`` makes it."""
    assert session.work is not None and session.tissue is not None
    source = open_slide(session.slide_path, mpp=session.slide_mpp)
    try:
        return slide_regions(entry.row, source, session.work, session.tissue, class_map)
    finally:
        source.close()


def open_manifest_slides(
    slides: Sequence[ManifestSlide],
    *,
    work_mpp: float,
    tile: int,
    root: str | Path | None = None,
    class_map: str | Path | Mapping[str, str] | None = None,
    held: Mapping[str, SlideSession] | None = None,
    mpp_hint: str = "give its level-0 µm/px in the manifest's mpp column",
) -> list[OpenedSlide]:
    """Open every slide of ``slides`` (:func:`read_manifest_group`) as a session prepared at ``work_mpp``
    µm/px with ``tile``-px tiles, with the row's weak labels (see the module docstring).

    A slide without a session in ``held`` (slide path → session, e.g. the widget's) gets a new one, in its
    project under ``root`` (default :func:`~.project.projects_root`), prepared (its saved work restored,
    its lock taken) and given its labels and saved here; a held one must already be prepared at that
    geometry and µm/px (else a one-line :class:`InputError`): only its labels are read, and its owner
    takes them (:func:`take_manifest_labels`). Reads, plans and writes only new sessions: safe in a
    worker. On an error the new sessions made so far are closed (their locks given back)."""
    from napari_milkd.core.annotations.io import class_map_from

    mapping = class_map_from(class_map)
    held = dict(held or {})
    opened: list[OpenedSlide] = []
    made: list[SlideSession] = []
    try:
        for entry in slides:
            session = next((s for p, s in held.items() if _same_path(p, entry.path)), None)
            warnings = [entry.warning] if entry.warning else []
            restored: list[str] = []
            if session is not None:
                check_held_session(session, entry, work_mpp, tile)
            else:
                session = SlideSession(
                    entry.path,
                    slide_mpp=entry.slide_mpp,
                    project=Project.for_slide(entry.path, root),
                    mpp_hint=mpp_hint,
                    bag_rule=REGIONS_RULE.name,
                )
                made.append(session)
                restored = session.prepare(work_mpp, tile)
            regions, notes = _manifest_regions(entry, session, mapping)
            warnings += notes
            taken = None
            if session in made:
                taken = take_manifest_labels(session, regions)
                session.save()
            opened.append(
                OpenedSlide(entry, session, regions, session in made, tuple(restored), tuple(warnings), taken)
            )
    except BaseException:
        for session in made:
            session.close()
        raise
    return opened


def check_held_session(session: SlideSession, entry: ManifestSlide, work_mpp: float, tile: int) -> None:
    """Refuse (one-line :class:`InputError`) a session already open on ``entry``'s slide that is not
    prepared at ``work_mpp`` µm/px with ``tile``-px tiles, or is open at another µm/px than the
    manifest gives: it can take the row's labels only as it is."""
    work = session.work
    if work is None:
        raise InputError(f"{entry.name} is open but not prepared: prepare it, or close it first")
    if not math.isclose(work.grid.mpp, work_mpp, rel_tol=1e-3) or work.grid.tile != tile:
        raise InputError(
            f"{entry.name} is prepared at {work.grid.mpp:g} µm/px with {work.grid.tile} px tiles, not "
            f"{work_mpp:g} µm/px with {tile} px: set those, or prepare it again first"
        )
    if entry.slide_mpp is not None and not math.isclose(
        float(session.info.mpp or 0.0), entry.slide_mpp, rel_tol=0.01
    ):
        raise InputError(
            f"{entry.name} is open at {session.info.mpp:g} µm/px; the manifest says {entry.slide_mpp:g}: "
            "fix one of them"
        )


def open_manifest_group(
    manifest: str | Path,
    *,
    work_mpp: float,
    tile: int,
    root: str | Path | None = None,
    class_map: str | Path | Mapping[str, str] | None = None,
) -> list[OpenedSlide]:
    """:func:`read_manifest_group` then :func:`open_manifest_slides` (new sessions only), in one call
    (headless use): every slide of ``manifest`` a prepared session with its row's weak labels, ready for
    :func:`group_train_job`. Close the sessions when done."""
    return open_manifest_slides(
        read_manifest_group(manifest), work_mpp=work_mpp, tile=tile, root=root, class_map=class_map
    )
