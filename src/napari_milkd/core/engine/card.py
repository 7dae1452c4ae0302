"""Model cards: what a checkpoint was trained on, with what, when, and how well it validated.

Owns the ``"card"`` entry of a checkpoint (a dict of plain JSON values, so ``torch.load(weights_only=True)``
reads it) and its text for people. The trainers (:func:`~napari_milkd.core.engine.train.train_teacher`,
:func:`~napari_milkd.core.engine.train.distill_student`) write it into every checkpoint: the caller gives
the provenance (``card=``: what the model was trained on, the classes, the preset; build it with
:func:`slide_provenance` or :func:`folder_provenance`), the trainer adds the facts it knows (stage, schedule,
input spec, bag counts, dates, epochs, validation figures, software version). Front ends show it with
:func:`describe_model` (one or a few lines), :func:`card_lines` (``milkd info``) and warn with
:func:`is_sample_only` / :data:`SAMPLE_WARNING`.

Plain data only: may import the standard library and :mod:`napari_milkd.core.errors`; never torch, so a
front end can describe a loaded checkpoint without more imports.

Card keys (all optional when read: a card from another version, or none at all, still describes):

* ``card_version`` (1), ``stage`` (``teacher``/``student``/``full``), ``software`` (``napari-milkd X.Y``)
* ``trained_on``: ``{"kind": "slides", "slides": [names], "paths": [paths], "sample_only": bool}`` or
  ``{"kind": "image folder", "images": path, "labels": path, "name_column", "label_column",
  "patient_column"}`` or ``{"kind": "unknown"}``
* ``classes``: ``{"positive": "what a positive bag means", "negative": [values or descriptions]}``
* ``preset`` (name or ``None``), ``schedule`` (the training config's schedule fields), ``spec`` (the input
  spec, as in the checkpoint), ``bags`` (``train``, ``train_positive``, ``validation``,
  ``validation_positive``)
* ``created``, ``updated`` (ISO 8601, UTC), ``epochs`` (``done``, ``planned``)
* ``validation``: ``criterion`` (text), ``best_epoch``, ``best_score``, ``last_score``
* ``teacher`` (students only): the teacher's ``stage``, ``created``, ``epochs`` and ``validation``
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_milkd.core.errors import InputError

CARD_VERSION = 1

#: The warning every front end shows for a model trained only on the built-in synthetic sample slide.
SAMPLE_WARNING = (
    "trained only on the synthetic sample slide: its masks on real tissue are not meaningful; "
    "train on your own slides first"
)

#: Schedule fields of the training config recorded in the card.
SCHEDULE_FIELDS = (
    "backbone",
    "weights",
    "size",
    "batch_size",
    "teacher_epochs",
    "student_epochs",
    "switch_every",
    "switch_from",
    "lr",
    "weight_decay",
    "teacher_loss",
    "ce_weight",
    "supervision",
    "select_on",
    "val_fraction",
    "seed",
)


def now_iso() -> str:
    """The current time, ISO 8601 in UTC to the second (``2025-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def plain(value: Any, what: str = "model card") -> Any:
    """``value`` as plain JSON data (dicts, lists, str, numbers, bools, None); :class:`InputError` if not."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be plain JSON data: {exc}") from None


def slide_provenance(
    slides: Sequence[str | Path],
    *,
    sample_only: bool = False,
    positive: str = "contains tumour",
    negative: Sequence[str] = ("tumour-free",),
    preset: str | None = None,
) -> dict[str, Any]:
    """The ``card=`` a caller passes when the bags come from slides (painted or imported weak labels).

    ``sample_only`` marks a model trained only on the built-in synthetic sample slide.
    """
    return {
        "trained_on": {
            "kind": "slides",
            "slides": [Path(s).name for s in slides],
            "paths": [str(s) for s in slides],
            "sample_only": bool(sample_only),
        },
        "classes": {"positive": positive, "negative": list(negative)},
        "preset": preset,
    }


def folder_provenance(
    images: str | Path,
    labels: str | Path,
    *,
    name_column: str,
    label_column: str,
    positive: str,
    negative: Sequence[str] = (),
    patient_column: str | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """The ``card=`` a caller passes when the bags come from an image folder and a label CSV.

    ``negative``: the label values that count as negative (for the record; every value other than
    ``positive`` does).
    """
    return {
        "trained_on": {
            "kind": "image folder",
            "images": str(images),
            "labels": str(labels),
            "name_column": name_column,
            "label_column": label_column,
            "patient_column": patient_column,
        },
        "classes": {"positive": positive, "negative": list(negative) or ["every other value"]},
        "preset": preset,
    }


def model_card(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's card; for a checkpoint without one, what its other entries tell.

    The result always has ``recorded`` (``True`` when the checkpoint carries a card). Its ``spec`` is the
    checkpoint's own (the one every predictor feeds the model with), whatever the card copied.
    """
    raw = state.get("card")
    if isinstance(raw, dict):
        spec = state.get("spec")
        return {**raw, "recorded": True, **({"spec": spec} if isinstance(spec, dict) else {})}
    card: dict[str, Any] = {"recorded": False, "trained_on": {"kind": "unknown"}}
    if isinstance(state.get("stage"), str):
        card["stage"] = state["stage"]
    config = state.get("config")
    if isinstance(config, dict):
        card["schedule"] = {k: config[k] for k in SCHEDULE_FIELDS if k in config}
    if isinstance(state.get("spec"), dict):
        card["spec"] = state["spec"]
    if isinstance(state.get("epoch"), int):
        card["epochs"] = {"done": state["epoch"]}
    if "best_epoch" in state:
        card["validation"] = {"best_epoch": state.get("best_epoch"), "best_score": state.get("best_score")}
    return card


def is_sample_only(state: dict[str, Any]) -> bool:
    """Whether the checkpoint's card says the model was trained only on the synthetic sample slide."""
    card = state.get("card")
    trained = card.get("trained_on") if isinstance(card, dict) else None
    if not isinstance(trained, dict):
        return False
    return trained.get("sample_only") is True or trained.get("kind") == "sample"


def _text(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _trained_on(card: dict[str, Any]) -> str:
    trained = card.get("trained_on")
    if not isinstance(trained, dict) or trained.get("kind") in (None, "unknown"):
        return "not recorded (no model card)"
    kind = trained.get("kind")
    if kind == "slides":
        names = [str(n) for n in trained.get("slides") or []]
        shown = ", ".join(_text(n, 40) for n in names[:3]) + (
            f" and {len(names) - 3} more" if len(names) > 3 else ""
        )
        text = f"{len(names)} slide{'s' if len(names) != 1 else ''} ({shown})" if names else "slides"
        return text + (" — the synthetic sample only" if trained.get("sample_only") else "")
    if kind == "image folder":
        images = Path(str(trained.get("images", "?"))).name
        labels = Path(str(trained.get("labels", "?"))).name
        return f"image folder {_text(images, 40)} with labels {_text(labels, 40)}"
    if kind == "sample":
        return "the synthetic sample slide"
    return _text(kind)


def _classes(card: dict[str, Any]) -> str | None:
    classes = card.get("classes")
    if not isinstance(classes, dict) or "positive" not in classes:
        return None
    negative = classes.get("negative")
    neg = ", ".join(_text(n, 30) for n in negative) if isinstance(negative, list) else _text(negative, 40)
    return f"positive = {_text(classes['positive'], 40)}; negative = {neg or 'every other value'}"


def _spec(card: dict[str, Any]) -> str | None:
    spec = card.get("spec")
    if not isinstance(spec, dict):
        return None
    mpp = spec.get("mpp")
    at = f"at {mpp:g} µm/px" if isinstance(mpp, int | float) else "µm/px unknown"
    return f"{_text(spec.get('backbone', '?'), 30)}, {spec.get('tile', '?')}-px tiles {at}"


def _validation(card: dict[str, Any]) -> str | None:
    val = card.get("validation")
    if not isinstance(val, dict):
        return None
    score = val.get("best_score")
    if not isinstance(score, int | float):
        return f"no validation split (the last epoch is kept, epoch {val.get('best_epoch', '?')})"
    criterion = val.get("criterion")
    how = f" ({_text(criterion, 60)})" if criterion else ""
    return f"best score {score:.4g}{how} at epoch {val.get('best_epoch', '?')}"


def _epochs(card: dict[str, Any]) -> str | None:
    epochs = card.get("epochs")
    if not isinstance(epochs, dict) or "done" not in epochs:
        return None
    planned = epochs.get("planned")
    return f"{epochs['done']}/{planned}" if planned is not None else str(epochs["done"])


def describe_model(state: dict[str, Any]) -> str:
    """One line (two with the sample warning) saying which model a loaded checkpoint holds.

    E.g. ``student model (efficientnet_lite0, 256-px tiles at 0.5 µm/px) trained on 1 slide (CMU-1.svs);
    positive = contains tumour; negative = tumour-free; preset quick; 12/12 epochs; best score 0.81
    (F1 on validation masks) at epoch 9; 2025-01-31``.
    """
    card = model_card(state)
    stage = card.get("stage") or state.get("stage") or "model"
    parts = [f"{_text(stage, 20)} model"]
    spec = _spec(card)
    if spec:
        parts[0] += f" ({spec})"
    parts[0] += f" trained on {_trained_on(card)}"
    classes = _classes(card)
    if classes:
        parts.append(classes)
    if card.get("preset"):
        parts.append(f"preset {_text(card['preset'], 20)}")
    epochs = _epochs(card)
    if epochs:
        parts.append(f"{epochs} epochs")
    validation = _validation(card)
    if validation:
        parts.append(validation)
    when = card.get("updated") or card.get("created")
    if isinstance(when, str):
        parts.append(when[:10])
    line = "; ".join(parts)
    if is_sample_only(state):
        line += f"\nwarning: {SAMPLE_WARNING}"
    return line


def card_lines(state: dict[str, Any]) -> list[str]:
    """The card as ``label: value`` lines for a terminal (``milkd info MODEL.pt``)."""
    card = model_card(state)
    lines = [f"stage:        {_text(card.get('stage', state.get('stage', '?')), 20)}"]
    lines.append(f"trained on:   {_trained_on(card)}")
    trained = card.get("trained_on")
    if isinstance(trained, dict):
        for key in ("images", "labels"):
            if key in trained:
                lines.append(f"  {key}:{' ' * (10 - len(key))} {_text(trained[key], 200)}")
        for path in (trained.get("paths") or [])[:20]:
            lines.append(f"  slide:      {_text(path, 200)}")
    for label, text in (
        ("classes", _classes(card)),
        ("preset", None if not card.get("preset") else _text(card["preset"], 20)),
        ("input", _spec(card)),
        ("epochs", _epochs(card)),
        ("validation", _validation(card)),
    ):
        if text:
            lines.append(f"{label + ':':<13} {text}")
    bags = card.get("bags")
    if isinstance(bags, dict) and "train" in bags:
        lines.append(
            f"bags:         {bags.get('train')} train ({bags.get('train_positive', '?')} positive), "
            f"{bags.get('validation', 0)} validation ({bags.get('validation_positive', '?')} positive)"
        )
    schedule = card.get("schedule")
    if isinstance(schedule, dict) and schedule:
        keys = ("teacher_epochs", "student_epochs", "switch_every", "batch_size", "lr", "seed")
        lines.append("schedule:     " + ", ".join(f"{k} {schedule[k]}" for k in keys if k in schedule))
    for label in ("created", "updated", "software"):
        if card.get(label):
            lines.append(f"{label + ':':<13} {_text(card[label], 60)}")
    teacher = card.get("teacher")
    if isinstance(teacher, dict) and teacher:
        lines.append(
            f"teacher:      {_validation(teacher) or 'recorded'} (created {teacher.get('created', '?')})"
        )
    if not card.get("recorded"):
        lines.append("note:         this checkpoint has no model card (written by an older napari-milkd)")
    if is_sample_only(state):
        lines.append(f"warning:      {SAMPLE_WARNING}")
    return lines
