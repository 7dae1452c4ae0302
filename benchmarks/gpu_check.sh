#!/usr/bin/env bash
# GPU figures for issue #14 part 5, in ONE prepared run on a lent device machine (H100/H200).
#
# Run from the repository root:
#     bash benchmarks/gpu_check.sh                        # on the device: CUDA, full sizes
#     MILKD_GPU_DEVICE=cpu bash benchmarks/gpu_check.sh --smoke   # here: every step tiny, on the CPU
#
# Steps (each under its own `timeout`, all under one overall budget; a failing step is recorded in
# summary.txt and the script goes on):
#   smoke         `milkd train` (tiny backbone, random weights, 1+1 epochs) on a generated image folder,
#                 then `milkd predict` with that run on the built-in sample slide: CUDA end to end
#   train         bench_train.py: teacher / student step img/s, vgg16, 256², bf16, batches 16 64 128
#   infer         bench_infer.py: read, compute (vgg16, batch 256, bf16), end-to-end predict_slide and the
#                 plain loop over the WHOLE of a 40 000² generated slide (32 041 tiles: every band and the
#                 map's pyramid, so fixed per-slide costs weigh as on a real slide). Skipped: `write` (its
#                 free model and blending always run on the CPU: not a GPU figure) and `rss` (CPU memory)
#   train_slide   bench_train.py --data slide: trainer on sample-slide tiles vs synthetic, vgg16, batch 16
#   infer_lite0   bench_infer.py: compute + end-to-end with efficientnet_lite0, batch 256, same slide
#   infer_compile bench_infer.py --compile: compute only, vgg16, batch 256 (last: compiling is slow)
# bench_cpu_infer.py is not run: it is CPU-only (no --device; loads on "cpu").
#
# Environment:
#   OUT                where the logs go (default out/gpu_check); at most 7 files are written there:
#                      card.txt summary.txt smoke.log train.log infer.log train_slide.log infer_extra.log
#   MILKD_GPU_DEVICE   torch device (default cuda)
#   MILKD_GPU_SMOKE=1  same as --smoke
#   MILKD_GPU_BUDGET_S overall seconds for all steps (default 360; 240 with --smoke): a step's timeout is
#                      cut to what is left, and a step is skipped when under 20 s is left
#   MILKD_GPU_STEPS    space- or comma-separated subset of the step names above, in the order above
#   MILKD_GPU_WORK     scratch folder for slides, runs and the sample-slide cache (default
#                      /tmp/milkd_gpu_check); never under $OUT, which only takes a few files back
#   PYTHON             interpreter (default: .venv/bin/python when it exists, else python3)
#
# Dependencies: where `import napari_milkd` fails, wheels carried in .whl/ are installed into
# /tmp/site (the device README's pattern) and src/ goes on PYTHONPATH. docs/benchmarks.md says how to
# fetch the wheels and the exact device `run` command.
set -euo pipefail

SMOKE=${MILKD_GPU_SMOKE:-0}
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *)
            echo "unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEVICE=${MILKD_GPU_DEVICE:-cuda}
WORK=${MILKD_GPU_WORK:-/tmp/milkd_gpu_check}
mkdir -p "$WORK"
export MILKD_CACHE_DIR="$WORK/cache"
export PYTHONUNBUFFERED=1
if [[ "$SMOKE" == 1 ]]; then BUDGET=${MILKD_GPU_BUDGET_S:-240}; else BUDGET=${MILKD_GPU_BUDGET_S:-360}; fi
STEPS=${MILKD_GPU_STEPS:-smoke train infer train_slide infer_lite0 infer_compile}
STEPS=" ${STEPS//,/ } "
START=$SECONDS
SUMMARY="$OUT/summary.txt"

if [[ -n "${PYTHON:-}" ]]; then
    PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=$REPO/.venv/bin/python
else
    PY=python3
fi

# ---- dependencies -------------------------------------------------------------------------------------
setup_log=""
if ! "$PY" -c 'import napari_milkd.core.engine.train, napari_milkd.core.inference.stream' 2>/dev/null; then
    if [[ -d .whl ]] && compgen -G '.whl/*.whl' >/dev/null; then
        n_whl=$(find .whl -maxdepth 1 -name '*.whl' | wc -l)
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl; then
            setup_log="installed $n_whl carried wheels into /tmp/site; PYTHONPATH=src:/tmp/site"
        else
            setup_log="pip install of $n_whl carried wheels FAILED; PYTHONPATH=src:/tmp/site"
        fi
        export PYTHONPATH="$REPO/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
        setup_log="no .whl/ folder; PYTHONPATH=src"
    fi
fi

# ---- the card -----------------------------------------------------------------------------------------
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "command: OUT=$OUT MILKD_GPU_DEVICE=$DEVICE MILKD_GPU_SMOKE=$SMOKE bash benchmarks/gpu_check.sh $*"
    if head=$(git rev-parse --short HEAD 2>/dev/null); then
        git diff --quiet HEAD 2>/dev/null || head="$head + local changes"
        echo "git: $head"
    else
        echo "git: (no repository here)"
    fi
    echo "python: $PY ($("$PY" -V 2>&1))"
    echo "setup: ${setup_log:-napari_milkd already importable}"
    echo "host: $(uname -m), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo) RAM"
    echo "--- nvidia-smi"
    nvidia-smi 2>&1 || echo "(nvidia-smi not available)"
    echo "--- torch"
    "$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA device)")' 2>&1 || true
    "$PY" -c 'import torch; print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "threads", torch.get_num_threads())' 2>&1 || true
    echo "--- packages"
    "$PY" - <<'EOF' 2>&1 || true
import importlib.metadata as md
for name in ("numpy", "scipy", "scikit-image", "tifffile", "imagecodecs", "zarr", "numcodecs", "shapely",
             "openslide-python", "openslide-bin", "orjson", "platformdirs", "defusedxml", "triton"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
EOF
} >"$OUT/card.txt"

printf '%-14s %5s %7s  %s\n' step rc seconds note >"$SUMMARY"

# run_step NAME LOG TIMEOUT_S CMD...: runs CMD under `timeout` (cut to the budget left), appends its
# stdout and stderr to $OUT/LOG, records the exit code; never fails the script.
run_step() {
    local name=$1 log=$2 limit=$3
    shift 3
    if [[ "$STEPS" != *" $name "* ]]; then
        return 0
    fi
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < 20)); then
        printf '%-14s %5s %7s  %s\n' "$name" - 0 "skipped: ${left}s of the ${BUDGET}s budget left" >>"$SUMMARY"
        return 0
    fi
    if ((limit > left)); then limit=$left; fi
    {
        echo "### $name: $(date -u +%H:%M:%SZ), timeout ${limit}s"
        echo "### $*"
    } >>"$OUT/$log"
    local t0=$SECONDS rc=0
    timeout -k 10 "$limit" "$@" >>"$OUT/$log" 2>&1 || rc=$?
    local note=""
    if ((rc == 124 || rc == 137)); then note="timed out after ${limit}s"; fi
    echo "### $name: exit $rc after $((SECONDS - t0)) s" >>"$OUT/$log"
    printf '%-14s %5s %7s  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$note" >>"$SUMMARY"
    echo "$name: exit $rc, $((SECONDS - t0)) s"
}

# ---- sizes --------------------------------------------------------------------------------------------
if [[ "$SMOKE" == 1 ]]; then
    TRAIN_ARGS=(--backbone tiny --size 64 --batches 4 --quick)
    SLIDE_ARGS=(--backbone tiny --size 64 --batches 4 --steps 1 --warmup 1 --rounds 1 --max-bags 24 --work-mpp 0.5)
    INFER_ARGS=(--backbone tiny --batch-size 8 --size 4096 --read-tiles 32 --e2e-tiles 32 --compute-seconds 1 --read-threads 2)
    COMPILE_ARGS=(--backbone tiny --batch-size 8 --size 4096 --compute-seconds 1)
    LITE0_ARGS=(--backbone tiny --batch-size 8 --size 4096 --e2e-tiles 16 --compute-seconds 1 --read-threads 2)
    T_SMOKE=120 T_TRAIN=60 T_INFER=90 T_SLIDE=90 T_COMPILE=60 T_LITE0=60
else
    TRAIN_ARGS=(--backbone vgg16 --size 256 --batches 16 64 128 --steps 30 --warmup 5)
    # batch 16: ~6 counted steps per epoch of the sample slide's ~100 tiles (each epoch's first is not counted)
    SLIDE_ARGS=(--backbone vgg16 --size 256 --batches 16 --steps 20 --warmup 3 --rounds 3 --work-mpp 0.5)
    READ_THREADS=$(($(nproc) > 4 ? $(nproc) - 2 : 2))
    # --e2e-tiles above the grid's 32 041 tiles: the whole slide
    INFER_ARGS=(--backbone vgg16 --batch-size 256 --size 40000 --read-tiles 2000 --e2e-tiles 1000000
        --compute-seconds 8 --read-threads "$READ_THREADS")
    COMPILE_ARGS=(--backbone vgg16 --batch-size 256 --size 40000 --compute-seconds 8)
    LITE0_ARGS=(--backbone efficientnet_lite0 --batch-size 256 --size 40000 --e2e-tiles 1000000
        --compute-seconds 5 --read-threads "$READ_THREADS")
    T_SMOKE=90 T_TRAIN=120 T_INFER=150 T_SLIDE=120 T_COMPILE=120 T_LITE0=90
fi
INFER_WORK="$WORK/bench_infer"

# ---- smoke: milkd train + predict on the device (a function run by `timeout bash -c smoke`) -----------
smoke() {
    set -euo pipefail
    local root="$WORK/smoke"
    rm -rf "$root"
    "$PY" - "$root" <<'EOF'
import csv, sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
(root / "images").mkdir(parents=True)
rng = np.random.default_rng(0)
rows = [("name", "label")]
for i in range(16):
    img = rng.integers(60, 140, (72, 72, 3), dtype=np.uint8)
    if i % 2:
        img[16:48, 20:52] = (200, 60, 150)
    Image.fromarray(img).save(root / "images" / f"im{i}.png")
    rows.append((f"im{i}", "tumour" if i % 2 else "normal"))
with (root / "labels.csv").open("w", newline="") as fh:
    csv.writer(fh).writerows(rows)
print("16 images in", root)
EOF
    "$PY" -m napari_milkd train --images "$root/images" --labels "$root/labels.csv" --name-column name \
        --label-column label --positive tumour --out "$root/run" --backbone tiny --weights random \
        --size 64 --batch-size 8 --teacher-epochs 1 --student-epochs 1 --switch-every 0 --image-mpp 0.5 \
        --device "$DEVICE"
    local slide
    slide=$("$PY" -c 'from napari_milkd.core.slides.sample import ensure_sample_slide; print(ensure_sample_slide().path)')
    "$PY" -m napari_milkd predict --run "$root/run" --out "$root/pred" --device "$DEVICE" --batch-size 32 \
        --json "$slide"
}

export -f smoke
export PY DEVICE WORK
run_step smoke smoke.log "$T_SMOKE" bash -c smoke
run_step train train.log "$T_TRAIN" "$PY" benchmarks/bench_train.py --device "$DEVICE" "${TRAIN_ARGS[@]}"
run_step infer infer.log "$T_INFER" "$PY" benchmarks/bench_infer.py --device "$DEVICE" --work "$INFER_WORK" \
    --skip write,rss "${INFER_ARGS[@]}"
run_step train_slide train_slide.log "$T_SLIDE" "$PY" benchmarks/bench_train.py --device "$DEVICE" \
    --data slide "${SLIDE_ARGS[@]}"
run_step infer_lite0 infer_extra.log "$T_LITE0" "$PY" benchmarks/bench_infer.py --device "$DEVICE" \
    --work "$INFER_WORK" --skip read,write,rss "${LITE0_ARGS[@]}"
run_step infer_compile infer_extra.log "$T_COMPILE" "$PY" benchmarks/bench_infer.py --device "$DEVICE" \
    --work "$INFER_WORK" --compile --skip read,write,e2e,rss "${COMPILE_ARGS[@]}"

# ---- the figures, against issue 14's aims (H100/H200, 256², bf16) -------------------------------------
"$PY" - "$OUT" >>"$SUMMARY" 2>&1 <<'EOF' || echo "(figures: parser failed)" >>"$SUMMARY"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def objects(log):
    """The JSON objects a log holds (one-line or indented), in order."""
    path = out / log
    if not path.exists():
        return []
    text, found, i = path.read_text(errors="replace"), [], 0
    dec = json.JSONDecoder()
    while (i := text.find("{", i)) >= 0:
        try:
            obj, end = dec.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict) and ("device" in obj or "backbone" in obj):
            found.append(obj)
        i = end
    return found


print()
print("figures (aims: teacher >= 2000 img/s, student >= 1500 img/s, compute >= 10000 tiles/s, "
      "e2e >= 0.6 x compute)")
for obj in objects("train.log"):
    if "results" in obj:
        print(f"train  {obj['device']} torch {obj['torch']} {obj['backbone']} {obj['size']}px "
              f"bf16={obj['amp_bf16']}")
        for batch, r in obj["results"].items():
            print(f"  batch {batch:>4}: teacher {r['teacher_img_s']} img/s, student {r['student_img_s']} img/s")
for obj in objects("train_slide.log"):
    if "slide" in obj:
        s = obj["slide"]
        print(f"train_slide {obj['backbone']} bags {obj['bags']['n']}: img/s {s['img_s']}, "
              f"slide/synthetic_batch {s['ratio_slide_vs_synthetic_batch']} (aim >= 0.8)")
for log in ("infer.log", "infer_extra.log"):
    for obj in objects(log):
        if "slide" not in obj or "compile" not in obj:
            continue
        parts = [f"{obj['backbone']} bs {obj['batch_size']} compile={obj['compile']} gpu={obj.get('gpu')}"]
        for key in ("read", "compute", "write"):
            if key in obj:
                parts.append(", ".join(f"{k} {v}" for k, v in obj[key].items()))
        e2e = obj.get("e2e")
        if e2e:
            parts.append(", ".join(f"{k} {e2e[k]}" for k in ("e2e_tiles_s", "plain_loop_tiles_s",
                                                             "e2e_over_compute", "e2e_over_plain_loop")
                                   if k in e2e))
        print("infer  " + "; ".join(parts))
EOF

echo "total: $((SECONDS - START)) s of a ${BUDGET} s budget" >>"$SUMMARY"
cat "$SUMMARY"
