"""The CLI stands alone: `snapcell call` with host functions, output modes, time limits and
layout options; `snapcell debug` with a real gdb; and a corpus of wrong inputs for every verb of
`snapcell/cli/`, each answered by a message that names the argument and the fix, exit status
2 for usage errors and 1 for failures, and never a traceback."""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from snapcell.cli import main

ROOT = Path(__file__).resolve().parents[1]
ELF = str(ROOT / "build/guests/simpleguest.elf")
DEBUG_ELF = str(ROOT / "build/guests/simpleguest-debug.elf")

HOST_MODULE = '''
from snapcell import HostFunctions
from snapcell.types import I32

def host_add(a: I32, b: I32) -> I32:
    return a + b + 1000

host_functions = HostFunctions().register("HostAdd", host_add)

def make() -> HostFunctions:
    return HostFunctions().register("HostAdd", host_add)

def broken_factory() -> HostFunctions:
    raise RuntimeError("no database")

not_functions = 42
'''


def cli(*args: str, cwd: Path | None = None) -> Result:
    """Run `snapcell ARGS` in-process (from `cwd`)."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), catch_exceptions=True)
    finally:
        os.chdir(old)


def snapcell(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run `python -m snapcell ARGS` in a real subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "snapcell", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def assert_clean(r: Result, code: int) -> str:
    """Exit status `code`, no exception escaped (so no traceback); the combined output."""
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r.output


@pytest.fixture
def host_module(tmp_path: Path) -> Path:
    (tmp_path / "myfuncs.py").write_text(HOST_MODULE)
    return tmp_path


# --------------------------------------------------------------------------- call: what works
def test_call_prints_plain_text_not_reprs(kvm_ok: None) -> None:
    assert assert_clean(cli("call", ELF, "Echo", '{"words":3}'), 0) == '{"words":3}\n'
    assert assert_clean(cli("call", ELF, "EchoI32", "-0x10"), 0) == "-16\n"
    assert assert_clean(cli("call", ELF, "EchoBool", "true"), 0) == "true\n"
    assert assert_clean(cli("call", ELF, "EchoBytes", "00ff"), 0) == "00ff\n"
    assert assert_clean(cli("call", ELF, "NoOp"), 0) == ""


def test_call_json_and_raw(kvm_ok: None) -> None:
    out = json.loads(assert_clean(cli("call", ELF, "Echo", '{"words":3}', "--json"), 0))
    assert out == {"function": "Echo", "type": "str", "result": '{"words":3}'}
    out = json.loads(assert_clean(cli("call", ELF, "EchoBytes", "00ff10", "--json"), 0))
    assert base64.b64decode(out["result"]) == b"\x00\xff\x10"
    assert assert_clean(cli("call", ELF, "Echo", "hi", "--raw"), 0) == "hi"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "snapcell", "call", ELF, "EchoBytes", "00ff10", "--raw"],
                       capture_output=True, timeout=120, env=env)
    assert (p.returncode, p.stdout) == (0, b"\x00\xff\x10")


def test_call_host_functions_object_factory_and_file(kvm_ok: None, host_module: Path) -> None:
    assert assert_clean(cli("call", ELF, "Add", "1", "2", "--host-functions", "myfuncs:host_functions",
                            cwd=host_module), 0) == "1003\n"
    assert assert_clean(cli("call", ELF, "Add", "1", "2", "--host-functions", "myfuncs:make",
                            cwd=host_module), 0) == "1003\n"
    path = str(host_module / "myfuncs.py")
    assert assert_clean(cli("call", ELF, "Add", "1", "2", "--host-functions", f"{path}:make"),
                        0) == "1003\n"


def test_call_timeout_and_layout_options(kvm_ok: None) -> None:
    out = assert_clean(cli("call", ELF, "Spin", "--timeout", "0.05"), 1)
    assert "ExecutionTimeout" in out
    assert assert_clean(cli("call", ELF, "MallocMany", "4", "--heap-size", "16M",
                            "--stack-size", "1M", "--input-size", "64K", "--output-size", "64k"),
                        0).strip().isdigit()


def test_subprocess_exit_codes_and_no_traceback(kvm_ok: None) -> None:
    ok = snapcell("call", ELF, "Echo", "hello")
    assert (ok.returncode, ok.stdout) == (0, "hello\n")
    usage = snapcell("call", ELF, "EchoI32", "abc")
    assert usage.returncode == 2
    assert "argument 0 (i32): 'abc' is not an integer" in usage.stderr
    fail = snapcell("call", ELF, "TriggerException")
    assert fail.returncode == 1 and "InvalidOpcode" in fail.stderr
    for p in (usage, fail):
        assert "Traceback" not in p.stderr + p.stdout


# --------------------------------------------------------------------------- the wrong-input corpus
# (argv, exit status, substrings the message must contain: the argument, and the fix)
CORPUS: list[tuple[list[str], int, list[str]]] = [
    (["call", ELF, "EchoI32", "abc"], 2, ["argument 0 (i32): 'abc' is not an integer", "0x"]),
    (["call", ELF, "EchoI32", "99999999999"], 2, ["argument 0 (i32)", "out of range"]),
    (["call", ELF, "EchoF64", "fast"], 2, ["argument 0 (f64): 'fast' is not a number"]),
    (["call", ELF, "EchoBool", "yes"], 2, ["argument 0 (bool)", "true, false"]),
    (["call", ELF, "EchoBytes", "xyz"], 2, ["argument 0 (bytes)", "hex"]),
    (["call", ELF, "Echo", "hello", "world", "again"], 2,
     ["takes 1 argument, got 3", "quote", "'hello world again'"]),
    (["call", ELF, "Add", "1"], 2, ["Add(i32, i32) -> i32 takes 2 arguments, got 1"]),
    (["call", ELF, "Ech", "x"], 2, ["no function 'Ech'", "did you mean 'Echo'", "It exports: Add"]),
    (["call", ELF, "Add", "1", "2"], 1, ["HostAdd", "--host-functions"]),
    (["call", ELF, "NoOp", "--heap-size", "12Q"], 2, ["--heap-size", "K/M/G", "16M"]),
    (["call", ELF, "NoOp", "--heap-size", "5000"], 2, ["--heap-size", "multiple of 4096"]),
    (["call", ELF, "NoOp", "--stack-size", "4K"], 2, ["--stack-size", "16 KiB"]),
    (["call", ELF, "NoOp", "--timeout", "-1"], 2, ["--timeout", "positive"]),
    (["call", ELF, "NoOp", "--timeout", "soon"], 2, ["--timeout", "'soon' is not a valid float"]),
    (["call", ELF, "NoOp", "--json", "--raw"], 2, ["--json and --raw"]),
    (["call", ELF, "NoOp", "--host-functions", "myfuncs"], 2, ["--host-functions", "MODULE:ATTR"]),
    (["call", ELF, "NoOp", "--host-functions", "nosuchmod:x"], 2,
     ["--host-functions", "no module named 'nosuchmod'"]),
    (["call", ELF, "NoOp", "--host-functions", "myfuncs:nothing"], 2,
     ["has no attribute 'nothing'", "host_functions", "make"]),
    (["call", ELF, "NoOp", "--host-functions", "myfuncs:not_functions"], 2,
     ["is a int, not a HostFunctions or a factory"]),
    (["call", ELF, "NoOp", "--host-functions", "myfuncs:broken_factory"], 2,
     ["calling myfuncs.broken_factory() failed", "no database"]),
    (["call", ELF, "NoOp", "--host-functions", "missing.py:x"], 2, ["no file 'missing.py'"]),
    (["call", "nonexistent.elf", "NoOp"], 2, ["'ELF'", "nonexistent.elf", "does not exist"]),
    (["call", "myfuncs.py", "NoOp"], 1, ["GuestLoadError", "myfuncs.py"]),
    (["call", ELF], 2, ["Missing argument 'FUNCTION'"]),
    (["debug", ELF, "Compute", "x"], 2, ["argument 0 (i32): 'x' is not an integer"]),
    (["debug", ELF, "Compute", "1", "--port", "70000"], 2, ["--port", "70000"]),
    (["debug", ELF, "Nope"], 2, ["no function 'Nope'", "It exports"]),
    (["guest", "functions", "nonexistent.elf"], 2, ["'ELF'", "does not exist"]),
    (["guest", "functions", ELF, "--heap-size", "1X"], 2, ["--heap-size", "16M"]),
    (["guest", "build", "x.c"], 2, ["'SOURCES...'", "'x.c' does not exist"]),
    (["guest", "build", "myfuncs.py"], 2, ["Missing option '-o'"]),
    (["call", ELF, "EchoI32", "-5", "--jsn"], 2, ["takes 1 argument, got 2", "'--jsn'"]),
    (["demo", "nonexistent.elf"], 2, ["does not exist"]),
    (["bench", "--quick", "--json", "--out"], 2, ["'--out' requires an argument"]),
    (["nosuchverb"], 2, ["No such command 'nosuchverb'"]),
]


@pytest.mark.parametrize("argv,code,expected", CORPUS, ids=[" ".join(a[0:1] + a[2:4]) for a, _, _ in CORPUS])
def test_wrong_input_corpus(argv: list[str], code: int, expected: list[str], kvm_ok: None,
                            host_module: Path) -> None:
    out = assert_clean(cli(*argv, cwd=host_module), code)
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    assert "snapcell." not in out.replace("snapcell call", "").replace("snapcell debug", "") \
        or "Usage" in out      # no library internals (module paths) in the message


def test_debug_port_in_use_is_a_clear_error(kvm_ok: None) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = assert_clean(cli("debug", ELF, "NoOp", "--port", str(port)), 1)
    assert f"127.0.0.1:{port} is already in use" in out and "--port 0" in out


# --------------------------------------------------------------------------- snapcell debug + gdb
def test_debug_prints_the_gdb_command_that_works(kvm_ok: None) -> None:
    gdb = shutil.which("gdb")
    assert gdb is not None, "gdb is required (scripts/bootstrap.sh installs it)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "snapcell", "debug", DEBUG_ELF, "Compute", "5",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        argv = shlex.split(line)
        assert argv[:3] == ["gdb", "-q", "-ex"] and argv[3].startswith("target remote 127.0.0.1:")
        assert argv[4] == DEBUG_ELF
        g = subprocess.run([*argv, "-nx", "-batch", "-ex", "info symbol $pc", "-ex", "bt 1",
                            "-ex", "break scale", "-ex", "continue", "-ex", "finish",
                            "-ex", "detach"], capture_output=True, text=True, timeout=60)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "16"
    assert "Compute" in g.stdout.split("Breakpoint")[0], g.stdout   # the first stop: Compute's entry
    assert "scale (v=5, factor=3)" in g.stdout, g.stdout
    assert "Traceback" not in err
