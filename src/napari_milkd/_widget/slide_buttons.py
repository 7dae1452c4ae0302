"""Which slide-widget buttons may be pressed, and, for each greyed one, why not.

A pure function of a few facts (:class:`SlideState`): a button is enabled only when its step cannot be
sure to fail, and a disabled button's tooltip says what is missing, in a line short enough for a toast.
No Qt here; :class:`~napari_milkd._widget.slide_form.SlideForm` applies the result to its buttons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_milkd.core.session.slide_session import SlideSession
    from napari_milkd.core.slides.types import SlideInfo

OPEN_SLIDE = "open a slide first"
NEEDS_MPP = "enter the slide's µm/px and press 'Set µm/px' first"
PREPARE_FIRST = "prepare the slide first"
WAIT = "wait for the running job, or cancel it"
NEEDS_BAGS = "paint or import both positive and negative regions first"
TEACHER_FIRST = "train the teacher first"
STUDENT_FIRST = "distil the student first"
NO_MASK = "no {stage} mask to export yet"
NO_IMPORT = "nothing imported to undo"


@dataclass(frozen=True)
class SlideState:
    """What the slide widget knows now: a slide chosen (with its µm/px), prepared, a job running, the
    bag counts, which stages have a model and a mask, and the mask chosen for export."""

    has_slide: bool = False
    has_mpp: bool = False
    prepared: bool = False
    busy: bool = False
    positive: int = 0
    negative: int = 0
    models: frozenset[str] = frozenset()
    masks: frozenset[str] = frozenset()
    export_stage: str = "student"
    can_undo_import: bool = False

    @classmethod
    def of(
        cls,
        session: SlideSession | None,
        *,
        slide: SlideInfo | None,
        busy: bool,
        bags: tuple[int, int],
        export_stage: str,
    ) -> SlideState:
        """The state of a widget showing ``slide`` with ``session`` (None until prepared)."""
        models = frozenset(s for s in ("teacher", "student") if session is not None and session.has_model(s))
        return cls(
            has_slide=slide is not None,
            has_mpp=slide is not None and slide.has_mpp,
            prepared=session is not None,
            busy=busy,
            positive=bags[0] if session is not None else 0,
            negative=bags[1] if session is not None else 0,
            models=models,
            masks=frozenset(session.masks) if session is not None else frozenset(),
            export_stage=export_stage,
            can_undo_import=session is not None and session.can_undo_import,
        )


def no_mask_reason(stage: str, has_model: bool) -> str:
    """Why ``stage`` has no mask to export: not trained yet, or trained without a map on this slide."""
    if has_model:
        return f"the {stage} has no mask on this slide: train it again"
    return f"{NO_MASK.format(stage=stage)}: {TEACHER_FIRST if stage == 'teacher' else STUDENT_FIRST}"


def first_reason(*reasons: str | None) -> str | None:
    """The first of ``reasons`` that is not None: why a button is greyed, or None when it is not."""
    return next((reason for reason in reasons if reason), None)


def button_reasons(state: SlideState) -> dict[str, str | None]:
    """For each button (by the form's attribute name): None when it may be pressed, else why not."""
    ready = PREPARE_FIRST if not state.prepared else WAIT if state.busy else None
    bags = None if state.positive and state.negative else NEEDS_BAGS
    stage = state.export_stage
    reasons: dict[str, str | None] = {
        "prepare_button": first_reason(
            OPEN_SLIDE if not state.has_slide else None,
            NEEDS_MPP if not state.has_mpp else None,
            WAIT if state.busy else None,
        ),
        "train_teacher_button": first_reason(ready, bags),
        "train_student_button": first_reason(
            ready, None if "teacher" in state.models else TEACHER_FIRST, bags
        ),
        "next_round_button": first_reason(ready, None if "student" in state.models else STUDENT_FIRST, bags),
        "review_button": first_reason(
            PREPARE_FIRST if not state.prepared else None, None if state.masks else TEACHER_FIRST
        ),
        "export_button": first_reason(
            ready, None if stage in state.masks else no_mask_reason(stage, stage in state.models)
        ),
    }
    for name in ("paint_tumour", "paint_free", "all_free", "import_button", "use_run_button"):
        reasons[name] = ready
    reasons["undo_import_button"] = first_reason(ready, None if state.can_undo_import else NO_IMPORT)
    return reasons
