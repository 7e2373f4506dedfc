"""`snapcell image build` and `snapcell run --image` end to end (real subprocesses, pip against
PyPI, real KVM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def snapcell(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "snapcell", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def test_build_then_run_on_the_image(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("tabulate==0.10.0\n")
    ref = f"{tmp_path / 'layout'}:v1"
    p = snapcell("image", "build", "python", "-r", str(req), "--preload", "tabulate", "-o", ref)
    assert p.returncode == 0, p.stderr
    assert "1 wheel(s)" in p.stdout
    lock = (tmp_path / "layout" / "v1.lock").read_text()
    assert "tabulate==0.10.0 --hash=sha256:" in lock
    p = snapcell("run", "--image", ref, "--json",
                 "import tabulate, sys\n['tabulate' in sys.modules, tabulate.tabulate([[1]])]")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["value"] == [True, "-\n1\n-"]
    p = snapcell("run", "--image", ref, "import numpy")
    assert p.returncode == 1
    assert "ModuleNotFoundError" in p.stderr and ref in p.stderr


def test_build_refuses_a_package_without_a_musllinux_wheel(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("scikit-learn\n")
    p = snapcell("image", "build", "python", "-r", str(req), "-o", f"{tmp_path / 'l'}:x")
    assert p.returncode != 0
    assert "scikit-learn" in p.stderr and "musllinux_1_2_x86_64" in p.stderr
    assert "Traceback" not in p.stderr


def test_run_on_a_missing_image_is_a_usage_error(tmp_path: Path) -> None:
    p = snapcell("run", "--image", f"{tmp_path / 'none'}:x", "1 + 1")
    assert p.returncode == 2
    assert "snapcell image build" in p.stderr and "Traceback" not in p.stderr
