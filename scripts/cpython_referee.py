"""CPython's own Lib/test modules as the referee of the Python sandbox: each module runs inside
one code sandbox and natively in a process of the same static build (build/cpython/obj/python),
and the outcomes are compared test by test.

    .venv/bin/python scripts/cpython_referee.py [--json OUT] [MODULE ...]

Prints a Markdown table (run / passed / failed / errors / skipped, sandbox vs native) and every
test whose outcome differs, with the sandbox's error. tests/code/test_python_suite.py runs a
small slice of this in `make test`; `make cpython-referee` runs the full selection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import referee_common as common  # noqa: E402
from referee_common import explainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "build" / "cpython" / "obj" / "python"
MODULES = ("test_json", "test_re", "test_math", "test_datetime", "test_collections",
           "test_statistics", "test_heapq", "test_bisect", "test_textwrap", "test_string",
           "test_fractions", "test_csv", "test_itertools", "test_functools", "test_dataclasses",
           "test_random", "test_struct", "test_base64", "test_zlib", "test_enum", "test_operator",
           "test_fstring", "test_string_literals", "test_sqlite3", "test_lzma", "test_bz2",
           "test_asyncio")

# Runs the module's tests with unittest and returns the outcome of every test as a dict
# {id: ["pass"|"fail"|"error"|"skip", detail]}. The same text runs in both places.
DRIVER = r'''
import io, unittest
def _referee(name):
    suite = unittest.defaultTestLoader.loadTestsFromName("test." + name)
    out = {}
    class R(unittest.TextTestResult):
        def addSuccess(self, t):
            super().addSuccess(t); out[t.id()] = ["pass", ""]
        def addFailure(self, t, e):
            super().addFailure(t, e); out[t.id()] = ["fail", self._exc_info_to_string(e, t)[-600:]]
        def addError(self, t, e):
            super().addError(t, e); out[t.id()] = ["error", self._exc_info_to_string(e, t)[-600:]]
        def addSkip(self, t, why):
            super().addSkip(t, why); out[t.id()] = ["skip", str(why)[:200]]
        def addExpectedFailure(self, t, e):
            super().addExpectedFailure(t, e); out[t.id()] = ["pass", "expected failure"]
        def addUnexpectedSuccess(self, t):
            super().addUnexpectedSuccess(t); out[t.id()] = ["fail", "unexpected success"]
        def addSubTest(self, test, sub, err):
            super().addSubTest(test, sub, err)
            if err is not None:
                kind = "fail" if issubclass(err[0], test.failureException) else "error"
                out[sub.id()] = [kind, self._exc_info_to_string(err, test)[-600:]]
    unittest.TextTestRunner(stream=io.StringIO(), resultclass=R, verbosity=0).run(suite)
    return out
'''


# Why a test may pass natively and not in the sandbox: what the sandbox leaves out by design.
KNOWN = {
    "test.test_json.test_tool.": "runs `python -m json.tool` in a subprocess",
    "test.test_re.ReTests.test_regression_gh94675": "uses multiprocessing (fork and a pipe)",
    "test.test_sqlite3.test_dbapi.ThreadTests.": "threads (its sub-tests each start one)",
    "test.test_sqlite3.test_transactions.TransactionTests.test_locking":
        "expects a file lock between two connections (one process: SQLite's unix-none VFS)",
    "test.test_sqlite3.test_transactions.TransactionTests.test_raise_timeout":
        "expects a file lock between two connections (one process: SQLite's unix-none VFS)",
    "test.test_asyncio.test_buffered_proto.": "a TCP server and client (the sandbox has no network)",
    "test.test_asyncio.test_threads.": "asyncio.to_thread (threads: one vCPU, no clone)",
}
# test_asyncio modules whose import makes a socket (test.support.socket_helper's
# skip_unless_bind_unix_socket decorator), so none of their tests load in the sandbox
for _m in ("test_base_events", "test_events", "test_server", "test_sock_lowlevel",
           "test_streams", "test_unix_events"):
    KNOWN[f"test.test_asyncio.{_m}."] = KNOWN[f"unittest.loader._FailedTest.test.test_asyncio.{_m}"] = (
        "the module makes a socket while it is imported, so none of its tests load (no network)")
RULES = (
    ("[Errno 38] Function not implemented", "a system call the sandbox leaves out "
                                            "(pipe/fork/exec, sockets, signals)"),
    ("the sandbox has no processes", "starts a process (the sandbox has none)"),
    ("the sandbox has no pipes", "makes a pipe (no other process or thread to share it with)"),
    ("the sandbox has no network", "opens a socket (the sandbox has no network)"),
    ("the sandbox delivers no signals", "installs a signal handler (nothing delivers signals)"),
    ("for asyncio to watch", "watches a socket or pipe (the sandbox has none)"),
    ("can't start new thread", "threads (there is one vCPU and no clone)"),
    ("MemoryError", "needs more than the sandbox's heap limit (128 MiB at most)"),
)


explain = explainer(KNOWN, RULES)


def run_native(module: str, timeout: float = 900) -> dict[str, list[str]]:
    """The module's outcomes in a native process of the static build."""
    code = DRIVER + f"\nimport json, sys\nsys.stdout.write(json.dumps(_referee({module!r})))\n"
    p = subprocess.run([str(NATIVE), "-I", "-c", code], capture_output=True, text=True,
                       timeout=timeout, cwd="/tmp")
    if p.returncode != 0:
        raise RuntimeError(f"native {module} failed: {p.stderr[-2000:]}")
    out: dict[str, list[str]] = json.loads(p.stdout.splitlines()[-1])
    return out


def run_sandbox(module: str, timeout: float = 900) -> dict[str, list[str]]:
    """The module's outcomes inside one Python code sandbox."""
    return common.sandbox_outcomes(module, DRIVER + f"\nimport json\njson.dumps(_referee({module!r}))",
                                   timeout=timeout)


def compare(module: str) -> dict[str, Any]:
    """Both runs of one module and the tests whose outcome differs."""
    return common.compare(module, run_native, run_sandbox, f"test.{module} (import)")


if __name__ == "__main__":
    common.main(sys.argv[1:], MODULES, compare, explain)
