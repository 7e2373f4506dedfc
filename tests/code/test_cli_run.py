"""`snapcell run` end to end (a real subprocess, real KVM): exit codes 0/1/2, --json, -f, --tool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def snapcell_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "snapcell", "run", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def test_success_prints_output_and_value() -> None:
    p = snapcell_run("--lang", "js", "console.log('hi'); ({a: [1, 2]})")
    assert p.returncode == 0, p.stderr
    assert p.stdout == 'hi\n{"a": [1, 2]}\n'


def test_code_error_exits_1() -> None:
    p = snapcell_run("--lang", "lua", "local x = nil\nreturn x.y")
    assert p.returncode == 1
    assert "RuntimeError" in p.stderr and "main.lua:2" in p.stderr


def test_json_and_file(tmp_path: Path) -> None:
    script = tmp_path / "script.lua"
    script.write_text("print('from file')\nreturn {answer = 42}\n")
    p = snapcell_run("--json", "-f", str(script))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["value"] == {"answer": 42} and out["stdout"] == "from file\n" and out["error"] is None
    p = snapcell_run("--json", "--lang", "js", "throw new TypeError('t')")
    assert p.returncode == 1
    assert json.loads(p.stdout)["error"]["type"] == "TypeError"


def test_tools_and_timeout() -> None:
    p = snapcell_run("--lang", "js", "--tool", "tests.code.tools_for_cli:lookup",
                     "--tool", "boom=tests.code.tools_for_cli:explode",
                     "let e; try { boom(1) } catch (x) { e = x.name } [lookup('k').items[2].deep, e]")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [True, "KeyError"]
    p = snapcell_run("--lang", "lua", "--timeout", "0.2", "while true do end")
    assert p.returncode == 1 and "TimeoutError" in p.stderr


def test_usage_errors_exit_2() -> None:
    assert snapcell_run("1 + 1").returncode == 2                       # no language
    assert snapcell_run("--lang", "cobol", "1").returncode == 2
    assert snapcell_run("--lang", "js").returncode == 2                # no code
    assert snapcell_run("--lang", "js", "--tool", "nomodule_xyz:f", "1").returncode == 2
    assert snapcell_run("--lang", "js", "--tool", "bad-spec", "1").returncode == 2


TOOLS_PY = '''
def lookup(key):
    return {"key": key, "n": 3}

def make():
    from snapcell import HostFunctions
    return HostFunctions()
'''


def _run_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "snapcell", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)


def test_tools_from_a_file_path_and_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "mytools.py").write_text(TOOLS_PY)
    for spec in ("lookup=./mytools.py:lookup", "mytools:lookup", "lookup=mytools:lookup",
                 f"lookup={tmp_path / 'mytools.py'}:lookup"):
        p = _run_in(tmp_path, "run", "--lang", "python", "--tool", spec, "lookup('k')['n']")
        assert p.returncode == 0, (spec, p.stderr)
        assert p.stdout.strip() == "3"
    for spec, why in (("./nofile.py:lookup", "no file"), ("./mytools.py:nope", "no attribute"),
                      ("nomodule_xyz:f", "no module"), ("mytools", "expected")):
        p = _run_in(tmp_path, "run", "--lang", "python", "--tool", spec, "1")
        assert p.returncode == 2 and why in p.stderr, (spec, p.stderr)
        assert "unexpected" not in p.stderr and "report" not in p.stderr


def test_serve_host_functions_from_a_file_path(tmp_path: Path, monkeypatch: Any) -> None:
    import click
    import pytest

    from snapcell.cli.serve import load_host_functions
    from snapcell.sandbox import HostFunctions
    (tmp_path / "f.py").write_text(TOOLS_PY)
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_host_functions("./f.py:make"), HostFunctions)
    assert isinstance(load_host_functions("f:make"), HostFunctions)
    with pytest.raises(click.BadParameter, match="lookup"):
        load_host_functions("./f.py:lookup")
    p = _run_in(tmp_path, "serve", "--host-functions", "./f.py:nope")
    assert p.returncode == 2 and "no attribute 'nope'" in p.stderr, p.stderr
