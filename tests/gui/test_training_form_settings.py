"""The training form shows each setting as its one description says (label, range, choices, tooltip), and
starts at the preset's values; the CLI's half is ``tests/core/engine/test_settings_one_definition.py``."""

from __future__ import annotations

from qtpy.QtWidgets import QLabel

from napari_milkd._widget.training_panel import NUMBERS, TrainingPanel
from napari_milkd.core.engine.presets import schedule
from napari_milkd.core.engine.settings import SETTINGS


def test_form_fields_come_from_the_settings(qtbot) -> None:
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    defaults = schedule(panel.preset)
    assert set(panel.numbers) == set(NUMBERS) == {"teacher_epochs", "student_epochs", "batch_size"}
    for name, widget in panel.numbers.items():
        setting = SETTINGS[name]
        assert (widget.name, widget.label, widget.min, widget.max) == (
            name,
            setting.label,
            1,
            setting.maximum,
        )
        assert widget.tooltip == setting.help == widget.native.toolTip()
        assert widget.value == getattr(defaults, name)
    assert [w.label for w in panel.numbers.values()] == ["teacher", "student", "Batch size"]
    for name, combo in (("backbone", panel.backbone_combo), ("net", panel.net_combo)):
        setting = SETTINGS[name]
        assert [combo.itemText(i) for i in range(combo.count())] == list(setting.choices)
        assert combo.toolTip() == setting.help
        assert combo.currentText() == getattr(defaults, name)
        label = panel.form.labelForField(combo)
        assert isinstance(label, QLabel) and label.text() == setting.label
    assert panel.backbone_combo.itemText(0) == "efficientnet_lite0"  # the default first, as before
    assert panel.config(64) == schedule(panel.preset, size=64)


def test_saved_settings_are_said_in_the_labels_words(qtbot) -> None:
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    saved = {
        "backbone": "tiny",
        "net": "sa_mil",
        "teacher_epochs": 5,
        "batch_size": 8,
        "student_epochs": 2000,
    }
    changed = panel.apply_settings(saved)
    assert changed == ["backbone tiny", "MIL net sa_mil", "teacher epochs 5", "batch size 8"]
    assert panel.student_epochs.value == schedule(panel.preset).student_epochs  # 2000 is out of range
