#!/usr/bin/env bash
# Create or reuse the virtual environment at .venv in the repository root, with napari-milkd and its
# dev tools installed. Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it only
# reinstalls when pyproject.toml changed).
#   MILKD_GUI_PACKAGES=1  also install the Debian packages a virtual display needs (xvfb, Mesa, xcb).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# System packages for running napari under a virtual display (DESIGN.md §6): the GUI tests (and the
# demo on a machine without a screen) draw napari into xvfb with Mesa's software OpenGL, and Qt's xcb
# platform needs these X libraries. Installed only when one is missing, checked with dpkg-query, which a
# normal user has on PATH (ldconfig lives in /usr/sbin, which is not), so a second run asks for no sudo.
GUI_PACKAGES=(xvfb xauth libgl1-mesa-dri libegl1 libgl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
  libxcb-cursor0 libdbus-1-3 libfontconfig1)
missing_gui_packages() {
  local pkg
  for pkg in "${GUI_PACKAGES[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || echo "$pkg"
  done
}
if [[ "${MILKD_GUI_PACKAGES:-0}" == "1" ]]; then
  if ! command -v dpkg-query >/dev/null; then
    echo "== not a Debian/Ubuntu system: install xvfb, Mesa (EGL/GL) and Qt's xcb libraries yourself" >&2
  else
    MISSING="$(missing_gui_packages | tr '\n' ' ')"
    if [[ -n "${MISSING// /}" ]]; then
      SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
      echo "== installing Debian packages for a virtual display: $MISSING"
      $SUDO apt-get update -qq
      # shellcheck disable=SC2086
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $MISSING >/dev/null
    fi
  fi
fi

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY="$candidate"; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "napari-milkd needs Python 3.11 or newer" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv with $PY"
  "$PY" -m venv .venv
fi
STAMP=.venv/.milkd-installed
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]] || ! .venv/bin/python -c 'import napari_milkd' 2>/dev/null; then
  echo "== installing napari-milkd and its dev tools into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # The CPU build of torch 2.13.0 (on these machines' disk) satisfies our range; installing it first
  # keeps pip from pulling a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q "torch>=2.2,<2.15"
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
