"""`snapcell run` end to end (a real subprocess, real KVM): exit codes 0/1/2, --json, -f, --tool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
