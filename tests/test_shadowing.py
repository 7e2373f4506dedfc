"""A folder named `snapcell/` next to the user's script: the installed package is not shadowed by
a checkout's folder (the editable install is a plain path entry, not a meta-path finder that a
namespace package in the current directory would beat), and a copy of the package in the
current directory that would shadow the installed one raises a helpful ImportError (real
interpreter subprocesses)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "snapcell"
PROBE = "import snapcell, sys; sys.stdout.write(snapcell.__file__)"


def _python(cwd: Path, code: str = PROBE, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SNAPCELL_ALLOW_SHADOWING")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**clean, **env})


def _copy_package(dst: Path) -> None:
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__"))


def test_a_checkout_folder_named_snapcell_does_not_shadow_the_installed_package(tmp_path: Path) -> None:
    checkout = tmp_path / "snapcell"               # `git clone .../snapcell` in the user's folder
    (checkout / "docs").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "snapcell"\n')
    _copy_package(checkout / "snapcell")
    r = _python(tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout).resolve() == (PKG / "__init__.py").resolve()


def test_a_shadowing_copy_in_the_current_directory_is_refused(tmp_path: Path) -> None:
    _copy_package(tmp_path / "snapcell")
    r = _python(tmp_path)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: snapcell was about to be imported from "), r.stderr
    assert str((tmp_path / "snapcell").resolve()) in last
    assert f"shadows the installed snapcell at {PKG.resolve()}" in last
    assert "Run from another directory" in last and "SNAPCELL_ALLOW_SHADOWING=1" in last
    ok = _python(tmp_path, SNAPCELL_ALLOW_SHADOWING="1")
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout).resolve() == (tmp_path / "snapcell/__init__.py").resolve()


def test_the_installed_checkout_itself_is_not_shadowing() -> None:
    r = _python(PKG.parent)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout).resolve() == (PKG / "__init__.py").resolve()
