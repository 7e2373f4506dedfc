"""Python code sandboxes on real KVM: CPython 3.11 with its standard library from the warm
snapshot — values, output, errors with tracebacks, tools, limits, randomness, imports, the file
system (stdlib read-only, /tmp scratch, files in and out) and what the code cannot reach."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapcell import CodeSandbox
from snapcell.errors import ArgumentError

ROOT = Path(__file__).resolve().parents[2]
WARM = ("json", "re", "math", "datetime", "collections", "itertools", "functools", "dataclasses",
        "decimal", "statistics", "textwrap", "string", "random")


@pytest.fixture
def py() -> Iterator[CodeSandbox]:
    with CodeSandbox("python", timeout=5.0) as b:
        yield b


def test_value_of_the_last_expression(py: CodeSandbox) -> None:
    assert py.run("1 + 1").value == 2
    assert py.run("x = [i * i for i in range(5)]\nx").value == [0, 1, 4, 9, 16]
    assert py.run("x = 3").value is None
    assert py.run("{'a': (1, 2.5), 'b': b'\\x00', 'c': None, 'd': True}").value == \
        {"a": [1, 2.5], "b": b"\x00", "c": None, "d": True}
    assert py.run("2**64 - 1").value == 2**64 - 1
    assert py.run("-2**63").value == -2**63
    assert py.run("def f(n):\n    return n * 2\nf(21)").value == 42
    assert py.run("if True:\n    y = 5\ny").value == 5


def test_unmarshallable_values_are_type_errors(py: CodeSandbox) -> None:
    r = py.run("{1, 2}")
    assert r.error is not None and r.error.type == "TypeError" and "set" in r.error.message
    r = py.run("2**70")
    assert r.error is not None and r.error.type == "OverflowError"
    r = py.run("x = []\nx.append(x)\nx")
    assert r.error is not None and "nested too deeply" in r.error.message
    assert py.run("print").error is not None


def test_stdout_and_stderr(py: CodeSandbox) -> None:
    r = py.run("import sys\nprint('out', 1)\nprint('err', file=sys.stderr)\nsys.stdout.write('x')")
    assert r.stdout == "out 1\nx" and r.stderr == "err\n" and r.value == 1
    assert py.run("print('é' * 3)").stdout == "ééé\n"


def test_exceptions_are_code_errors_with_the_traceback(py: CodeSandbox) -> None:
    r = py.run("def f():\n    return {}['k']\n\nf()")
    e = r.error
    assert e is not None and not r.ok
    assert e.type == "KeyError" and e.message == "'k'" and e.line == 2 and e.language == "python"
    assert 'File "main.py", line 4, in <module>' in e.stack
    assert 'File "main.py", line 2, in f' in e.stack and "return {}['k']" in e.stack
    assert "_snapcell_runner" not in e.stack
    with pytest.raises(type(e)):
        r.unwrap()
    s = py.run("x = 1\ny = (\n")
    assert s.error is not None and s.error.type == "SyntaxError" and s.error.line == 2
    c = py.run("class Custom(Exception): pass\nraise Custom('boom')")
    assert c.error is not None and c.error.type == "Custom" and c.error.message == "boom"
    x = py.run("raise SystemExit(3)")
    assert x.error is not None and x.error.type == "SystemExit" and x.error.message == "exit code 3"
    # an error inside the standard library shows its source line from the image
    j = py.run("import json\njson.loads('{')")
    assert j.error is not None and j.error.type == "JSONDecodeError"
    assert "/usr/lib/python3.11/json/decoder.py" in j.error.stack


def test_tools_are_python_functions() -> None:
    seen: list[object] = []

    def search(q: str, n: int = 2) -> list[dict[str, object]]:
        seen.append((q, n))
        return [{"title": q.upper(), "rank": i} for i in range(n)]

    def fail(kind: str) -> None:
        if kind == "value":
            raise ValueError("bad value")
        raise LookupError("not here")

    class Weird(Exception):
        pass

    def weird() -> None:
        raise Weird("w")

    with CodeSandbox("python", tools={"search": search, "fail": fail, "weird": weird}) as box:
        r = box.run("hits = search('kvm', 3)\nprint(len(hits))\nhits[-1]")
        assert r.value == {"title": "KVM", "rank": 2} and r.stdout == "3\n"
        assert seen == [("kvm", 3)] and box.tool_calls == 1
        r = box.run("try:\n    fail('value')\nexcept ValueError as e:\n    out = str(e)\nout")
        assert r.value == "bad value"
        r = box.run("fail('other')")
        assert r.error is not None and r.error.type == "LookupError"
        r = box.run("try:\n    weird()\nexcept Exception as e:\n    t = type(e).__name__\nt")
        assert r.value == "Weird"
        r = box.run("search(q='x', n=2)")           # keyword arguments (issue 24)
        assert r.value == [{"title": "X", "rank": 0}, {"title": "X", "rank": 1}]
        r = box.run("search('x', nope=1)")
        assert r.error is not None and r.error.type == "TypeError"
        assert "nope" in r.error.message
        r = box.run("search({1, 2})")
        assert r.error is not None and r.error.type == "TypeError"
        assert box.run("search.__name__").value == "search"


def test_timeout_and_recovery(py: CodeSandbox) -> None:
    r = py.run("while True:\n    pass", timeout=0.3)
    assert r.error is not None and r.error.type == "TimeoutError"
    assert py.run("sum(range(10))").value == 45


def test_memory_limit_is_a_memory_error() -> None:
    with CodeSandbox("python", memory_limit=48 << 20) as box:
        r = box.run("x = bytearray(100 * 2**20)")
        assert r.error is not None and r.error.type == "MemoryError"
        r = box.run("x = []\nwhile True:\n    x.append('y' * 1000)")
        assert r.error is not None and r.error.type == "MemoryError"
        r = box.run("try:\n    b = bytearray(200 * 2**20)\nexcept MemoryError:\n    b = 'caught'\nb")
        assert r.value == "caught"
        assert box.run("len(bytearray(16 * 2**20))").value == 16 << 20


def test_output_limit() -> None:
    with CodeSandbox("python", max_output=1000) as box:
        r = box.run("for i in range(1000):\n    print('line', i)")
        assert r.output_truncated and len(r.stdout) == 1000
        assert r.error is not None and r.error.type == "OutputLimitError"


def test_fresh_state_and_keep_state() -> None:
    with CodeSandbox("python") as box:
        box.run("import sys\nsys.modules['json'].marker = 1\nleft = 5")
        assert box.run("'left' in globals()").value is False
        assert box.run("import json\nhasattr(json, 'marker')").value is False
    with CodeSandbox("python", keep_state=True) as box:
        box.run("counter = 10")
        box.run("counter += 1")
        assert box.run("counter").value == 11
        snap = box.snapshot()
        with CodeSandbox("python", snapshot=snap, keep_state=True) as fork:
            assert fork.run("counter").value == 11


def test_fresh_randomness_per_sandbox_and_run() -> None:
    code = "import random, os\n[random.random(), os.urandom(8).hex(), random.getrandbits(64)]"
    with CodeSandbox("python") as a, CodeSandbox("python") as b:
        ra, rb = a.run(code).value, b.run(code).value
        ra2 = a.run(code).value
    assert ra[0] != rb[0] and ra[1] != rb[1] and ra[2] != rb[2]
    assert ra[0] != ra2[0] and ra[1] != ra2[1]
    with CodeSandbox("python", keep_state=True) as k:
        first = k.run("import random\nrandom.random()").value
        second = k.run("random.random()").value
    assert first != second


@pytest.mark.parametrize("mod", WARM)
def test_warm_modules_are_already_imported(py: CodeSandbox, mod: str) -> None:
    assert py.run(f"import sys\n'{mod}' in sys.modules").value is True


def test_non_warm_stdlib_imports(py: CodeSandbox) -> None:
    code = """
import csv, heapq, fractions, io, zipfile, gzip, hashlib, base64, pathlib, unicodedata, sys
buf = io.StringIO()
csv.writer(buf).writerow(['a', 1])
z = io.BytesIO()
with zipfile.ZipFile(z, 'w', zipfile.ZIP_DEFLATED) as f:
    f.writestr('x.txt', 'hello' * 100)
data = zipfile.ZipFile(io.BytesIO(z.getvalue())).read('x.txt')
[buf.getvalue(), heapq.nsmallest(2, [5, 1, 4]), str(fractions.Fraction(1, 3) * 3),
 len(gzip.decompress(gzip.compress(b'x' * 1000))), len(data),
 hashlib.sha256(b'').hexdigest()[:8], unicodedata.name('a'), 'csv' in sys.modules]
"""
    r = py.run(code)
    assert r.error is None, r.error and r.error.stack
    assert r.value == ["a,1\r\n", [1, 4], "1", 1000, 500, "e3b0c442", "LATIN SMALL LETTER A", True]
    # the next run starts from the warm snapshot again: csv is not imported there
    assert py.run("import sys\n'csv' in sys.modules").value is False


def test_missing_module(py: CodeSandbox) -> None:
    r = py.run("import numpy")
    assert r.error is not None and r.error.type == "ModuleNotFoundError"
    assert r.error.message.startswith("No module named 'numpy'. 'numpy' is not in this image")
    assert "hint: 'numpy' is not in this image" in r.error.stack
    # the code itself sees Python's own message (the hint is added to the reported error)
    assert py.run("try:\n    import numpy\nexcept ImportError as e:\n    m = str(e)\nm").value \
        == "No module named 'numpy'"
    for mod in ("tkinter", "idlelib", "_ctypes"):
        r = py.run(f"import {mod}")
        assert r.error is not None and r.error.type == "ModuleNotFoundError", mod
        assert "is not in this image" in r.error.message


def test_files_in_and_out(py: CodeSandbox) -> None:
    code = """
import csv, os
rows = list(csv.reader(open('data.csv')))
with open('out/summary.txt', 'w') as f:
    f.write(f'{len(rows)} rows')
open('/tmp/raw.bin', 'wb').write(bytes(range(256)))
sorted(os.listdir('.')), os.getcwd()
"""
    r = py.run("import os\nos.makedirs('out')\n" + code,
               files={"data.csv": b"a,b\n1,2\n3,4\n", "extra/readme.md": "hi"})
    assert r.error is None, r.error and r.error.stack
    assert r.value == [["data.csv", "extra", "out", "raw.bin"], "/tmp"]
    assert r.files == {"out/summary.txt": b"3 rows", "raw.bin": bytes(range(256))}
    assert not r.files_truncated
    # the scratch area vanished with the restore
    assert py.run("import os\nos.listdir('/tmp')").value == []


def test_dev_null_reads_empty_and_swallows_writes(py: CodeSandbox) -> None:
    r = py.run("import os, stat\n"
               "with open(os.devnull, 'w') as f:\n    n = f.write('x' * 100)\n"
               "with open(os.devnull, 'rb') as f:\n    d = f.read()\n"
               "(n, len(d), os.path.exists('/dev/null'), stat.S_ISCHR(os.stat(os.devnull).st_mode),"
               " open('/dev/null', 'a').write('y'))")
    assert r.error is None and r.value == [100, 0, True, True, 1], r


def test_tmp_is_part_of_snapshots_and_session_state() -> None:
    with CodeSandbox("python", keep_state=True) as box:
        box.run("open('notes.txt', 'w').write('kept')")
        assert box.run("open('notes.txt').read()").value == "kept"
        snap = box.snapshot()
        box.reset()
        assert box.run("import os\nos.path.exists('notes.txt')").value is False
        with CodeSandbox("python", snapshot=snap) as fork:
            assert fork.run("open('notes.txt').read()").value == "kept"


def test_tempfile_shutil_and_pathlib(py: CodeSandbox) -> None:
    code = """
import tempfile, shutil, pathlib, os
with tempfile.TemporaryDirectory() as d:
    p = pathlib.Path(d, 'sub')
    p.mkdir()
    (p / 'a.txt').write_text('alpha')
    shutil.copy(p / 'a.txt', p / 'b.txt')
    names = sorted(x.name for x in p.iterdir())
    kept = d
with tempfile.NamedTemporaryFile('w+', delete=False, dir='.') as f:
    f.write('x')
with tempfile.TemporaryFile() as t:        # O_TMPFILE is refused: falls back to an unlinked file
    t.write(b'abc')
    t.seek(0)
    assert t.read() == b'abc'
[names, os.path.exists(kept), os.path.basename(f.name) in os.listdir('.'), input.__name__]
"""
    r = py.run(code)
    assert r.error is None, r.error and r.error.stack
    assert r.value == [["a.txt", "b.txt"], False, True, "input"]
    assert py.run("input()").error.type == "EOFError"  # type: ignore[union-attr]


def test_hash_secret_is_fixed_per_warm_snapshot() -> None:
    """The documented decision (docs/code-sandboxes.md): siblings share the str hash secret."""
    with CodeSandbox("python") as a, CodeSandbox("python") as b:
        assert a.run("hash('snapcell')").value == b.run("hash('snapcell')").value


def test_files_out_cap_and_tmp_limit() -> None:
    with CodeSandbox("python", max_files_out=1000) as box:
        r = box.run("open('a', 'w').write('x' * 600)\nopen('b', 'w').write('y' * 600)")
        assert r.files_truncated and len(r.files) == 1
        r = box.run("f = open('big', 'wb')\nwhile True:\n    f.write(b'z' * 2**20)")
        assert r.error is not None and r.error.type == "OSError"
        assert f"[Errno {errno.ENOSPC}]" in r.error.message


def test_bad_files_argument() -> None:
    with CodeSandbox("python") as box:
        for bad in ({"../x": b""}, {"/etc/x": b""}, {"a//b": b""}, {"x": 5}, {"": b""}):
            with pytest.raises(ArgumentError):
                box.run("1", files=bad)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError):
            box.run("1", files={"big": b"x" * (2 << 20)})
    with CodeSandbox("lua") as lua, pytest.raises(ArgumentError):
        lua.run("return 1", files={"a": b""})


@pytest.mark.parametrize("code,err,no", [
    ("open('/usr/lib/python3.11/os.py', 'w')", "OSError", errno.EROFS),
    ("open('/usr/lib/python3.11/new.py', 'x')", "OSError", errno.EROFS),
    ("import os; os.remove('/usr/lib/python3.11/os.py')", "OSError", errno.EROFS),
    ("import os; os.mkdir('/data')", "OSError", errno.EROFS),
    ("open('/etc/passwd')", "FileNotFoundError", errno.ENOENT),
    ("open('/etc/new.txt', 'w')", "FileNotFoundError", errno.ENOENT),
    ("open('/proc/self/maps')", "FileNotFoundError", errno.ENOENT),
    ("import os; os.rename('/tmp', '/x')", "OSError", errno.EBUSY),
])
def test_writes_outside_tmp_and_host_files_are_refused(py: CodeSandbox, code: str, err: str,
                                                       no: int) -> None:
    r = py.run(code)
    assert r.error is not None and r.error.type == err, r.error
    assert r.error.message.startswith(f"[Errno {no}]"), r.error.message


def test_what_the_file_system_shows(py: CodeSandbox) -> None:
    r = py.run("import os, sys\n[sorted(os.listdir('/')), os.path.exists('/usr/lib/python3.11/json/"
               "__init__.py'), os.stat('/usr/lib/python3.11/os.py').st_size > 1000, sys.prefix]")
    assert r.value == [["tmp", "usr"], True, True, "/usr"]


def test_no_threads_processes_or_sockets(py: CodeSandbox) -> None:
    r = py.run("import threading\nthreading.Thread(target=print).start()")
    assert r.error is not None and r.error.type == "RuntimeError"
    r = py.run("import socket\nsocket.socket()")          # no network policy: no network
    assert r.error is not None and r.error.type == "PermissionError"
    assert "the sandbox has no network" in r.error.message
    r = py.run("import subprocess\nsubprocess.run(['ls'])")
    assert r.error is not None
    r = py.run("import os\nos.fork()")
    assert r.error is not None and r.error.type == "OSError"


def test_cpu_bound_code_and_clocks(py: CodeSandbox) -> None:
    r = py.run("import time\nt = time.process_time()\ns = sum(i * i for i in range(200000))\n"
               "[s, time.process_time() - t >= 0, time.time() > 1.6e9]")
    assert r.value == [sum(i * i for i in range(200000)), True, True]


def test_sleep_waits_and_the_time_limit_cuts_it(py: CodeSandbox) -> None:
    r = py.run("import time\nt = time.monotonic()\ntime.sleep(0.05)\ntime.monotonic() - t")
    assert r.error is None and 0.05 <= r.value < 1.0
    r = py.run("import time\ntime.sleep(30)", timeout=0.3)
    assert r.error is not None and r.error.type == "TimeoutError"
    assert py.run("1").value == 1


def snapcell_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "snapcell", "run", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def test_cli_run_python(tmp_path: Path) -> None:
    p = snapcell_run("--lang", "python", "print('hi')\n{'a': [1, 2]}")
    assert p.returncode == 0, p.stderr
    assert p.stdout == 'hi\n{"a": [1, 2]}\n'
    script = tmp_path / "job.py"
    script.write_text("import math\nmath.sqrt(16)\n")
    p = snapcell_run("--json", "-f", str(script))
    assert p.returncode == 0 and json.loads(p.stdout)["value"] == 4.0
    p = snapcell_run("--lang", "python", "1/0")
    assert p.returncode == 1 and "ZeroDivisionError" in p.stderr
    data = tmp_path / "in.csv"
    data.write_text("a,b\n1,2\n")
    out = tmp_path / "out"
    p = snapcell_run("--lang", "python", "--put", f"rows.csv={data}", "--save-files", str(out),
                     "import os\nos.mkdir('r')\nopen('r/n.txt', 'w').write(str(len(open('rows.csv')"
                     ".readlines())))")
    assert p.returncode == 0, p.stderr
    assert (out / "r" / "n.txt").read_text() == "2" and not (out / "rows.csv").exists()
    p = snapcell_run("--lang", "python", "--put", "nonsense", "1")
    assert p.returncode == 2


@pytest.mark.parametrize("code,error", [
    ("def f():\n    return f()\nf()", "RecursionError"),
    ("import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)", None),
    ("eval('(' * 200000 + ')' * 200000)", None),                   # parser limits
    ("import os\nos._exit(3)", "InternalError"),                   # leaves the interpreter
    ("import sys\nsys.stdout = None\nprint('x')", None),
    ("import gc\ngc.unfreeze()\ngc.collect()\n'x' * (6 << 20)", "InternalError"),  # > output buffer
    ("import builtins\ndel builtins.print\nimport sys\ndel sys.modules['json']", None),
    ("import signal\nsignal.alarm(1)\nsignal.pause()", None),
    ("import sys\nsys.setrecursionlimit(10**6)\nl = []\nfor i in range(200000):\n    l = [l]\n"
     "repr(l)", "InternalError"),                                    # C stack overflow: a fault
])
def test_hostile_python_fails_cleanly_and_the_sandbox_recovers(py: CodeSandbox, code: str,
                                                                error: str | None) -> None:
    r = py.run(code, timeout=10)
    if error is not None:
        assert r.error is not None and r.error.type == error, r
    after = py.run("import json\nprint('ok')\njson.dumps([1])")
    assert after.error is None and after.value == "[1]" and after.stdout == "ok\n"
