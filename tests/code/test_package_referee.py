"""numpy's and pandas' own tests as the referee of the data image, a slice of it in the suite:
each module runs with pytest inside a sandbox on the data image and natively under the same
CPython and musl on the same wheels; the same tests pass in both, except those explained. The
full selection is `make package-referee` (docs/code-sandboxes.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _referee() -> ModuleType:
    spec = importlib.util.spec_from_file_location("package_referee",
                                                  ROOT / "scripts" / "package_referee.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["package_referee"] = mod
    spec.loader.exec_module(mod)
    return mod


referee = _referee()


@pytest.mark.parametrize("module,min_tests", [("numpy/lib/tests/test_arraysetops.py", 100),
                                              ("pandas/tests/frame/methods/test_sort_values.py",
                                               100)])
def test_package_test_module_in_sandbox_matches_native(module: str, min_tests: int) -> None:
    assert referee.NATIVE.is_file() and (referee.TOOLS / "..").is_dir(), \
        "run `make test` (it links the native interpreter and unpacks the wheels)"
    result = referee.compare(module)
    native, sandbox = result["native"], result["sandbox"]
    assert native["run"] >= min_tests and native["fail"] == native["error"] == 0, native
    assert sandbox["run"] == native["run"], (sandbox, native)
    unexplained = {tid: d for tid, d in result["differences"].items()
                   if d["native"][0] != "pass" or d["sandbox"][0] in ("pass", "absent")
                   or referee.explain(tid, d["sandbox"][1]) is None}
    assert not unexplained, unexplained


def test_referee_fetch_stays_inside_its_folders() -> None:
    assert referee._fetch("site/numpy/__init__.py").startswith(b"")
    for bad in ("site/../../etc/passwd", "other/x", "tools/../site/numpy/__init__.py",
                "site/numpy"):
        with pytest.raises(FileNotFoundError):
            referee._fetch(bad)


def test_explanations_are_specific() -> None:
    assert referee.explain("x", "ImportError: ... the image is sealed (W^X seal) ...")
    assert referee.explain("x", "AssertionError: 1 != 2") is None
