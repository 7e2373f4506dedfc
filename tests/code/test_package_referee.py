"""numpy's and pandas' own tests as the referee of the data image, a slice of it in the suite:
each module runs with pytest inside a sandbox on the data image and natively under the same
CPython and musl on the same wheels; the same tests pass in both, except those explained. The
full selection is `make package-referee` (docs/code-sandboxes.md)."""

from __future__ import annotations

import pytest

from .referees import load

referee = load("package_referee")


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
    unexplained = referee.common.unexplained(result, referee.explain)
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
