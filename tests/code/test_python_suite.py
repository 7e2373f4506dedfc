"""CPython's own tests as the referee, a slice of it in the suite: a few Lib/test modules run
inside one Python sandbox each and natively in a process of the same static build; the same
tests pass in both, except those that need what the sandbox leaves out by design (threads,
subprocesses, pipes). The full selection is `make cpython-referee` (docs/code-sandboxes.md)."""

from __future__ import annotations

import pytest

from .referees import load

referee = load("cpython_referee")


@pytest.mark.parametrize("module,min_tests", [("test_json", 150), ("test_heapq", 50),
                                              ("test_bisect", 40), ("test_statistics", 350)])
def test_lib_test_module_in_sandbox_matches_native(module: str, min_tests: int) -> None:
    result = referee.compare(module)
    native, sandbox = result["native"], result["sandbox"]
    assert native["run"] >= min_tests and native["fail"] == native["error"] == 0, native
    assert sandbox["run"] == native["run"], (sandbox, native)
    unexplained = referee.common.unexplained(result, referee.explain)
    assert not unexplained, unexplained
    assert sandbox["pass"] >= native["pass"] - len(result["differences"])


def test_explanations_are_specific() -> None:
    assert referee.explain("x.y", "OSError: [Errno 38] Function not implemented")
    assert referee.explain("x.y", "RuntimeError: can't start new thread")
    assert referee.explain("x.y", "OSError: [Errno 38] the sandbox has no processes: ...")
    assert referee.explain("x.y", "OSError: [Errno 38] the sandbox has no network unless ...")
    assert referee.explain("x.y", "AssertionError: 1 != 2") is None
