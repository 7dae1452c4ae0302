#!/usr/bin/env bash
# Everything CI checks: ruff, the import-linter contracts (architecture rings), and pytest with the
# GUI tests in a real napari viewer under xvfb-run. Creates or reuses .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MILKD_GUI_PACKAGES=1 source "$ROOT/scripts/setup-env.sh"
cd "$ROOT"

echo "== ruff"
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
echo "== import-linter (core is headless, only the widget touches Qt)"
.venv/bin/lint-imports
echo "== pytest (GUI tests under xvfb-run)"
set +e
HYPOTHESIS_PROFILE=ci MILKD_REQUIRE_GUI=1 QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" \
  .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests (exit 5): treated as success, but check the selection" >&2
  exit 0
fi
exit $rc
