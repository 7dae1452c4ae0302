#!/usr/bin/env bash
# The main job: napari with the sample slide and the milkd widget docked.
#   scripts/demo.sh                      open napari (needs a display)
#   scripts/demo.sh --headless [--out D] no display: run the pipeline on the sample slide, write files to D (out/demo)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup-env.sh"
cd "$ROOT"
exec .venv/bin/milkd demo "$@"
