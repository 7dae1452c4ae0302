"""Accuracy on held-out patients: weak teacher and student beside full supervision and the trivial line.

The experiment runner of the accuracy issue (#13): a GlaS-style image folder with patient ids is split by
patient (the test patients never train and never choose an epoch), and for each seed it runs what a user
runs — ``milkd train`` (weak: teacher + student; full: the same net on masks, with the weak protocol's
truth: tumour on positive bags, all background on negative ones) and ``milkd evaluate --json`` on the test
patients. Beside them, the **trivial line**: every malignant image marked entirely tumour (no model), the
bar a weak model has to clear to earn its place. Writes one JSON line per (run, model) to
``OUT/results.jsonl`` and a Markdown table (mean ± standard deviation over seeds) to ``OUT/results.md``.

Every training flag after ``--`` is passed to both ``milkd train`` runs, so one script covers the
ablations (``-- --size 256``, ``-- --switch-every 10``, ``-- --select-on masks`` ...); ``--tag`` names
the row. Example (quick preset, weak model selection, three seeds)::

    .venv/bin/python benchmarks/bench_accuracy.py --data ../shared/data/glas_dev --out runs/accuracy \\
        --seeds 0 1 2 --tag quick -- --preset quick --device cpu

A run folder that already holds a finished ``milkd evaluate`` result is not trained again (``--fresh``
retrains), so an interrupted table continues where it stopped. ``--skip-full`` trains only the weak run.

Model selection: every epoch of a run records every validation criterion (``val`` in ``history.jsonl``:
``weak``, ``agreement``, and ``masks`` = validation-mask F1 since the runner passes ``--masks``), so each
record also holds, per criterion, the epoch it would keep and that epoch's validation-mask F1
(``criteria``), and the Markdown gets a second table comparing them; the held-out scores are those of the
model the run actually selected (its ``select_on``, e.g. ``-- --select-on agreement``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The held-out patients of docs/benchmarks.md's GlaS table (24 images: 12 malignant, 12 benign).
TEST_PATIENTS = ("3", "4", "5", "6", "11")
METRICS = ("f1_pos", "iou_pos", "hd95_pos", "f1_neg")
#: Model-selection criteria the engine records per epoch (``"val"`` in ``history.jsonl``).
CRITERIA = ("weak", "agreement", "masks")
MILKD = [sys.executable, "-m", "napari_milkd"]


def split_by_patient(labels: Path, out: Path, test: set[str], patient_column: str) -> tuple[Path, Path]:
    """Write ``trainval.csv`` and ``test.csv`` (rows of ``labels`` by patient) under ``out``."""
    with labels.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or patient_column not in rows[0]:
        raise SystemExit(f"{labels} has no column {patient_column!r}")
    paths = (out / "trainval.csv", out / "test.csv")
    for path, keep in zip(paths, (False, True), strict=True):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if (r[patient_column] in test) == keep)
    return paths


def trivial_line(args: argparse.Namespace, test_csv: Path) -> dict[str, Any]:
    """Metrics of "every malignant image entirely tumour, every benign one empty" on the test patients,
    scored exactly as ``milkd evaluate`` scores a model (same masks, smoothing and threshold)."""
    from napari_milkd.core.engine.datasets import load_image_folder
    from napari_milkd.core.engine.metrics import evaluate_masks

    bags = load_image_folder(
        args.data / "images", test_csv, args.name_column, args.label_column, args.positive, 32,
        masks_dir=args.data / "masks", keep_eval_masks=True, require_both_classes=False,
    )  # fmt: skip
    assert bags.eval_masks is not None
    probs = [
        np.full(m.shape, float(label), np.float32)
        for m, label in zip(bags.eval_masks, bags.labels, strict=True)
    ]
    summary, _ = evaluate_masks(probs, bags.eval_masks, bags.labels.tolist())
    return summary.to_dict()


def run_milkd(command: list[str], log: Path) -> str:
    """Run the CLI, its stderr into ``log``; return its stdout (stop with its last line on failure)."""
    with log.open("a", encoding="utf-8") as err:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, check=False)
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8").strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"{' '.join(command[2:4])} failed ({result.returncode}): {tail[0]}  [log: {log}]")
    return result.stdout


def selected_epochs(run: Path) -> dict[str, int]:
    """The epoch each stage of ``run`` was selected at (its last ``best_epoch`` in ``history.jsonl``)."""
    history = run / "history.jsonl"
    if not history.is_file():
        return {}
    out: dict[str, int] = {}
    for line in history.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line) if line.strip() else {}
        if "stage" in entry and "best_epoch" in entry:
            out[entry["stage"]] = entry["best_epoch"]
    return out


def _history(run: Path) -> list[dict[str, Any]]:
    history = run / "history.jsonl"
    if not history.is_file():
        return []
    return [json.loads(line) for line in history.read_text(encoding="utf-8").splitlines() if line.strip()]


def criterion_picks(run: Path) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Per stage and criterion: the epoch the criterion picks in ``run``'s history, its validation-mask F1.

    ``{stage: {criterion: {"epoch": e, "val_masks": f1}}}``: the first epoch with the stage's highest
    recorded value of the criterion (as the trainer keeps the first best), and the validation-mask score
    (``"masks"``: mean per-image F1, tumour on positives, background on negatives) recorded for that epoch
    (``None`` when the validation bags had no masks). Only the criterion the run selected on shaped the
    run (the student's role reversals follow it); the others say which epoch of the same run they would
    have kept. Runs from before the per-epoch record have no ``"val"`` and give ``{}``.
    """
    picks: dict[str, dict[str, dict[str, float | int | None]]] = {}
    history = _history(run)
    for stage in dict.fromkeys(h.get("stage") for h in history):
        rows = [h for h in history if h.get("stage") == stage and isinstance(h.get("val"), dict)]
        for name in CRITERIA:
            scored = [h for h in rows if h["val"].get(name) is not None]
            if not scored:
                continue
            best = max(scored, key=lambda h: h["val"][name])  # max keeps the first of equal values
            picks.setdefault(str(stage), {})[name] = {
                "epoch": int(best["epoch"]),
                "val_masks": best["val"].get("masks"),
                "n_epochs": len(rows),
            }
    return picks


def select_on(run: Path) -> str | None:
    """The criterion the run selected on (its ``config.json``)."""
    config = run / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("config", {}).get("select_on")


def card() -> dict[str, Any]:
    """Where the numbers were made: machine, cores, torch, date."""
    import os

    import torch

    return {
        "machine": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def one_seed(args: argparse.Namespace, seed: int, trainval: Path, test: Path) -> list[dict[str, Any]]:
    """Train and evaluate the weak and the fully supervised run of one seed; one record per model."""
    data = [
        "--images", str(args.data / "images"), "--name-column", args.name_column,
        "--label-column", args.label_column, "--positive", args.positive,
    ]  # fmt: skip
    records = []
    kinds: list[tuple[str, list[str]]] = [("weak", []), ("full", ["--supervision", "full"])]
    for kind, extra in kinds[:1] if args.skip_full else kinds:
        run = args.out / f"{args.tag}-{kind}-seed{seed}"
        result_file = run / "evaluate.json"
        t0 = time.perf_counter()
        if args.fresh or not result_file.is_file():
            train = [
                *MILKD, "train", *data, "--labels", str(trainval), "--patient-column", args.patient_column,
                "--masks", str(args.data / "masks"), "--out", str(run), "--seed", str(seed),
                *extra, *args.train_args,
            ]  # fmt: skip
            if not args.fresh and (run / "config.json").is_file():
                train.append("--resume")
            run.mkdir(parents=True, exist_ok=True)
            run_milkd(train, run / "log.txt")
            evaluate = [
                *MILKD, "evaluate", "--run", str(run), *data, "--labels", str(test),
                "--masks", str(args.data / "masks"), "--device", args.device, "--json",
            ]  # fmt: skip
            result_file.write_text(run_milkd(evaluate, run / "log.txt"), encoding="utf-8")
            (run / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n", encoding="utf-8")
        wall_file = run / "wall_s.txt"
        wall = float(wall_file.read_text()) if wall_file.is_file() else float("nan")
        results = json.loads(result_file.read_text(encoding="utf-8"))
        picks = criterion_picks(run)
        for role, metrics in results.items():
            criteria = picks.get("full" if kind == "full" else role, {})
            if metrics is None:
                continue
            model = "full supervision" if kind == "full" else f"weak {role}"
            records.append(
                {
                    "tag": args.tag, "seed": seed, "model": model, "run": str(run),
                    "train_args": args.train_args, "selected": selected_epochs(run),
                    "select_on": select_on(run), "criteria": criteria,
                    "wall_s": round(wall, 1), **{k: metrics.get(k) for k in (*METRICS, "n_pos", "n_neg")},
                }
            )  # fmt: skip
    return records


def mean_sd(values: list[float]) -> str:
    """``0.712 ± 0.034`` (``± 0`` with one value)."""
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(records: list[dict[str, Any]], trivial: dict[str, Any], info: dict[str, Any]) -> str:
    """The Markdown table: one row per (tag, model), mean ± sd over seeds, and the trivial line."""
    lines = [
        f"Card: {info['machine']}, {info['cpu_cores']} cores, CUDA {info['cuda']}, torch {info['torch']}; "
        f"{info['date']}.",
        "",
        "| tag | model | seeds | " + " | ".join(METRICS) + " | wall s (per run) |",
        "|---|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    keys = sorted({(r["tag"], r["model"]) for r in records}, key=lambda k: (k[0], k[1]))
    for tag, model in keys:
        rows = [r for r in records if (r["tag"], r["model"]) == (tag, model)]
        cells = [mean_sd([r[m] for r in rows if r[m] is not None]) for m in METRICS]
        walls = mean_sd([r["wall_s"] for r in rows])
        lines.append(f"| {tag} | {model} | {len(rows)} | " + " | ".join(cells) + f" | {walls} |")
    cells = [("—" if trivial.get(m) is None else f"{trivial[m]:.3f}") for m in METRICS]
    lines.append("| — | trivial line: malignant images all tumour | — | " + " | ".join(cells) + " | 0 |")
    lines += selection_table(records)
    return "\n".join(lines) + "\n"


def selection_table(records: list[dict[str, Any]]) -> list[str]:
    """Per (tag, model) and criterion: the epoch it picks per seed and that epoch's validation-mask F1.

    Read from each run's history (every criterion is recorded every epoch), so one run compares them all;
    ``test F1_pos`` is the held-out score of the model the run actually selected (its ``select_on``).
    """
    rows = [r for r in records if r.get("criteria")]
    if not rows:
        return []
    lines = [
        "",
        "Model selection (from each run's history; validation-mask F1 = mean per-image F1 on the validation "
        "split, tumour on positives, background on negatives; selected = the run's `select_on`):",
        "",
        "| tag | model | selected on | criterion | epochs picked (per seed) | val-mask F1 of the pick | "
        "test F1_pos (selected model) |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["tag"], r["model"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for tag, model in keys:
        group = sorted((r for r in rows if (r["tag"], r["model"]) == (tag, model)), key=lambda r: r["seed"])
        chosen = {str(r.get("select_on")) for r in group}
        for name in CRITERIA:
            picks = [r["criteria"].get(name) for r in group]
            if not any(picks):
                continue
            epochs = ", ".join("—" if p is None else f"{p['epoch']}/{p['n_epochs']}" for p in picks)
            f1 = mean_sd([p["val_masks"] for p in picks if p is not None and p["val_masks"] is not None])
            test = "—"
            if chosen == {name}:
                test = mean_sd([r["f1_pos"] for r in group if r["f1_pos"] is not None])
            lines.append(
                f"| {tag} | {model} | {'/'.join(sorted(chosen))} | {name} | {epochs} | {f1} | {test} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_args = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "glas_dev")
    p.add_argument("--labels", default="grade_train.csv", help="label CSV inside --data")
    p.add_argument("--name-column", default="name")
    p.add_argument("--label-column", default="grade_glas")
    p.add_argument("--positive", default="malignant")
    p.add_argument("--patient-column", default="patient_id")
    p.add_argument("--test-patients", default=",".join(TEST_PATIENTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tag", default="default", help="the row's name in the table (an ablation, a preset)")
    p.add_argument("--device", default="cpu", help="for milkd evaluate")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "accuracy")
    p.add_argument("--fresh", action="store_true", help="train again even where a result exists")
    p.add_argument("--trivial-only", action="store_true", help="only the trivial line (no training)")
    p.add_argument(
        "--skip-full",
        action="store_true",
        help="train only the weak run (the fully supervised reference does not depend on weak selection)",
    )
    args = p.parse_args(argv)
    args.train_args = train_args
    if not (args.data / "images").is_dir():
        print(f"no GlaS-style folder at {args.data} (images/, masks/, {args.labels})", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    test_patients = {p.strip() for p in args.test_patients.split(",") if p.strip()}
    trainval, test = split_by_patient(args.data / args.labels, args.out, test_patients, args.patient_column)
    trivial = trivial_line(args, test)
    info = card()
    records: list[dict[str, Any]] = []
    if not args.trivial_only:
        for seed in args.seeds:
            for record in one_seed(args, seed, trainval, test):
                record["card"] = info
                records.append(record)
                with (args.out / "results.jsonl").open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
    markdown = table(records, trivial, info)
    (args.out / "results.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
