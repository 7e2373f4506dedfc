"""CPython's own tests as the referee, a slice of it in the suite: a few Lib/test modules run
inside one Python sandbox each and natively in a process of the same static build; the same
tests pass in both, except those that need what the sandbox leaves out by design (threads,
subprocesses, pipes). The full selection is `make cpython-referee` (docs/code-sandboxes.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _referee() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cpython_referee",
                                                  ROOT / "scripts" / "cpython_referee.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cpython_referee"] = mod
    spec.loader.exec_module(mod)
    return mod


referee = _referee()


@pytest.mark.parametrize("module,min_tests", [("test_json", 150), ("test_heapq", 50),
                                              ("test_bisect", 40), ("test_statistics", 350)])
def test_lib_test_module_in_sandbox_matches_native(module: str, min_tests: int) -> None:
    result = referee.compare(module)
    native, sandbox = result["native"], result["sandbox"]
    assert native["run"] >= min_tests and native["fail"] == native["error"] == 0, native
    assert sandbox["run"] == native["run"], (sandbox, native)
    unexplained = {tid: d for tid, d in result["differences"].items()
                   if d["native"][0] != "pass" or d["sandbox"][0] in ("pass", "absent")
                   or referee.explain(tid, d["sandbox"][1]) is None}
    assert not unexplained, unexplained
    assert sandbox["pass"] >= native["pass"] - len(result["differences"])


def test_explanations_are_specific() -> None:
    assert referee.explain("x.y", "OSError: [Errno 38] Function not implemented")
    assert referee.explain("x.y", "RuntimeError: can't start new thread")
    assert referee.explain("x.y", "OSError: [Errno 38] the sandbox has no processes: ...")
    assert referee.explain("x.y", "OSError: [Errno 38] the sandbox has no network unless ...")
    assert referee.explain("x.y", "AssertionError: 1 != 2") is None
