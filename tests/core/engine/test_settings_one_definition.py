"""One definition per training setting: the TrainConfig fields, their description
(``core.engine.settings``) and the CLI flags made from it cannot drift apart. The widget's half is
``tests/gui/test_training_form_settings.py``."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from napari_milkd.cli import build_parser, main
from napari_milkd.commands.train import _SCHEDULE_FLAGS
from napari_milkd.core.engine.config import BACKBONES, NETS, SETTING_CHOICES, TrainConfig
from napari_milkd.core.engine.presets import PRESETS, schedule
from napari_milkd.core.engine.settings import INTERNAL, SETTINGS

FOLDER = [
    "--images",
    "i",
    "--labels",
    "l.csv",
    "--name-column",
    "n",
    "--label-column",
    "c",
    "--positive",
    "p",
]


def _subparser(command: str) -> argparse.ArgumentParser:
    actions = build_parser()._subparsers._group_actions  # type: ignore[union-attr]
    return actions[0].choices[command]


def _flags(command: str) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in _subparser(command)._actions if a.option_strings}


def _text(value: object) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_every_field_is_described_or_internal() -> None:
    names = [f.name for f in fields(TrainConfig)]
    assert set(SETTINGS).isdisjoint(INTERNAL)
    assert sorted([*SETTINGS, *INTERNAL]) == sorted(names)
    assert all(name == s.name for name, s in SETTINGS.items())


def test_choices_are_configs_own_and_the_help_names_each() -> None:
    assert SETTINGS["backbone"].choices is BACKBONES and SETTINGS["net"].choices is NETS
    for name, choices in SETTING_CHOICES.items():
        assert SETTINGS[name].choices is choices
    for setting in SETTINGS.values():
        assert all(choice in setting.help for choice in setting.choices), setting.name


def test_the_default_a_flag_states_is_true() -> None:
    preset_fields = {name for preset in PRESETS.values() for name in preset}
    for name, setting in SETTINGS.items():
        if name in preset_fields:
            assert setting.default is not None and "the preset's" in setting.default, name
        elif setting.default is not None and "the preset's" not in setting.default:
            assert _text(getattr(TrainConfig(), name)) in setting.default, name


def test_train_has_one_generated_flag_per_setting() -> None:
    flags = _flags("train")
    config_fields = {f.name for f in fields(TrainConfig)}
    hand_written = {a.dest for a in flags.values() if a.dest in config_fields} - set(SETTINGS)
    assert hand_written == set()
    for name, setting in SETTINGS.items():
        action = flags[setting.flag]
        assert (action.dest, action.help, action.default) == (name, setting.cli_help, setting.cli_value)
        assert action.help.startswith(setting.help)
        assert action.choices == (setting.choices if setting.parser_checks else None)
    assert SETTINGS["augment"].flag == "--no-augment" and flags["--no-augment"].const is False
    switches = [name for name, setting in SETTINGS.items() if setting.kind is bool]
    assert all(getattr(TrainConfig(), name) is True for name in switches)  # a --no- flag turns each off
    assert flags["--fusion-weights"].nargs == 3 and flags["--fusion-weights"].type is float
    assert flags["--batch-size"].type is int and flags["--lr"].type is float and flags["--net"].type is None
    assert (flags["--device"].default, flags["--supervision"].default) == ("auto", "weak")
    assert set(_SCHEDULE_FLAGS) == set(SETTINGS) - {"supervision", "select_on", "device"}


def test_demo_shares_the_descriptions() -> None:
    flags = _flags("demo")
    for name in ("backbone", "batch_size", "device", "seed"):
        assert flags[SETTINGS[name].flag].help == SETTINGS[name].cli_help
    args = build_parser().parse_args(["demo"])
    assert (args.backbone, args.batch_size, args.device, args.seed) == (None, None, "auto", 0)


def test_a_full_command_line_gives_the_config_it_always_did() -> None:
    args = build_parser().parse_args(
        ["train", *FOLDER, "--out", "o", "--preset", "paper", "--backbone", "tiny", "--net", "sa_mil",
         "--weights", "random", "--size", "64", "--batch-size", "4", "--teacher-epochs", "3",
         "--student-epochs", "7", "--switch-every", "2", "--switch-from", "5", "--teacher-loss", "gm_bce",
         "--ce-weight", "0.5", "--ce-target", "soft", "--student-init", "teacher",
         "--fusion-weights", "0.2", "0.3", "0.5", "--no-augment", "--stain-jitter", "0.1",
         "--supervision", "weak", "--select-on", "weak", "--val-fraction", "0.3", "--lr", "1e-3",
         "--weight-decay", "0", "--device", "cpu", "--seed", "7"]
    )  # fmt: skip
    config = schedule(
        args.preset,
        **{flag: getattr(args, flag) for flag in _SCHEDULE_FLAGS},
        supervision=args.supervision,
        select_on=args.select_on,
        device=args.device,
    )
    assert config == TrainConfig(
        backbone="tiny", net="sa_mil", weights="random", size=64, batch_size=4, teacher_epochs=3,
        student_epochs=7, switch_every=2, switch_from=5, lr=1e-3, weight_decay=0.0,
        fusion_weights=(0.2, 0.3, 0.5), teacher_loss="gm_bce", ce_weight=0.5, ce_target="soft",
        student_init="teacher", supervision="weak", augment=False, stain_jitter=0.1, seed=7, device="cpu",
        val_fraction=0.3, select_on="weak",
    )  # fmt: skip
    bare = build_parser().parse_args(["train", *FOLDER, "--out", "o"])
    assert all(getattr(bare, flag) is None for flag in _SCHEDULE_FLAGS)
    assert (bare.supervision, bare.select_on, bare.device) == ("weak", None, "auto")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ["--backbone", "resnet"],
            "unknown backbone 'resnet'; choose one of efficientnet_lite0, tiny, vgg16",
        ),
        (["--net", "cam"], "unknown MIL net 'cam'; choose one of dws_mil, sa_mil"),
        (["--student-init", "imagenet"], "student init must be one of weights, teacher, got 'imagenet'"),
        (["--supervision", "pixels"], "argument --supervision: invalid choice: 'pixels'"),
        (["--select-on", "f1"], "argument --select-on: invalid choice: 'f1'"),
        (["--fusion-weights", "0.5", "0.5"], "argument --fusion-weights: expected 3 arguments"),
    ],
)
def test_bad_values_are_refused_as_before(
    change: list[str], message: str, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["train", *FOLDER, "--out", str(tmp_path), *change])
    except SystemExit as exc:  # argparse's own refusals leave through the parser's error()
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("milkd: error: ") and message in err and err.count("\n") == 1
