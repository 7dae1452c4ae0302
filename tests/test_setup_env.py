"""scripts/setup-env.sh (issue 15 case 8): the check for the virtual-display packages works with what a
normal user has on PATH, so a second run installs nothing and asks for no sudo."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _run_setup(tmp_path: Path, dpkg_query: str | None) -> str:
    """Run a copy of setup-env.sh with MILKD_GUI_PACKAGES=1 as a user whose PATH has no sbin folder.
    ``sudo``/``apt-get`` only record that they were called; the virtual environment is a stand-in that
    is already installed, so only the package check runs. Returns the record."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup-env.sh", repo / "scripts" / "setup-env.sh")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    _shim(venv_bin, "python", "exit 0")
    digest = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()
    (repo / ".venv" / ".milkd-installed").write_text(digest + "\n")
    shims = tmp_path / "bin"
    shims.mkdir()
    record = tmp_path / "calls"
    _shim(shims, "sudo", f'echo "sudo $*" >> {record}; "$@"')
    _shim(shims, "apt-get", f'echo "apt-get $*" >> {record}')
    if dpkg_query is not None:
        _shim(shims, "dpkg-query", dpkg_query)
    path = f"{shims}:/usr/bin:/bin"  # a normal user's PATH: no /usr/sbin, no /sbin
    env = {"PATH": path, "HOME": str(tmp_path), "MILKD_GUI_PACKAGES": "1", "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "setup-env.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return record.read_text() if record.exists() else ""


def test_installed_packages_are_not_installed_again(tmp_path: Path) -> None:
    """Regression: a bare ``ldconfig`` is not on a normal user's PATH, so every run re-ran apt-get."""
    calls = _run_setup(tmp_path, dpkg_query="printf 'install ok installed'")
    assert calls == ""


def test_a_missing_package_is_installed(tmp_path: Path) -> None:
    fake = 'case "$3" in libxcb-cursor0) exit 1;; *) printf "install ok installed";; esac'
    calls = _run_setup(tmp_path, dpkg_query=fake)
    assert "apt-get update" in calls
    install = [line for line in calls.splitlines() if "apt-get install" in line]
    assert len(install) == 1 and install[0].split()[-1] == "libxcb-cursor0"
    assert ("sudo apt-get" in calls) == (os.getuid() != 0)


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")
def test_the_real_check_on_this_machine_matches_dpkg(tmp_path: Path) -> None:
    """With the real dpkg-query: apt-get runs exactly when a package is missing on this machine."""
    script = (REPO / "scripts" / "setup-env.sh").read_text()
    listed = script.split("GUI_PACKAGES=(", 1)[1].split(")", 1)[0].split()
    missing = [
        p
        for p in listed
        if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout
        != "install ok installed"
    ]
    calls = _run_setup(tmp_path, dpkg_query=None)
    assert ("apt-get install" in calls) == bool(missing)
