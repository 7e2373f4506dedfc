"""Fixtures of the code-sandbox tests: the interpreter guests must be built (`make code-guests`);
a missing guest fails the tests, it never skips them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from snapcell import CodeSandbox
from snapcell.code import LANGUAGES


@pytest.fixture(scope="session", autouse=True)
def code_guests_built(kvm_ok: None) -> None:
    """Every interpreter guest exists (ConfigurationError otherwise, naming `make code-guests`)."""
    for lang in LANGUAGES.values():
        lang.guest_path()


@pytest.fixture(params=["js", "lua"])
def lang(request: pytest.FixtureRequest) -> str:
    """Each language in turn."""
    return str(request.param)


@pytest.fixture
def box(lang: str) -> Iterator[CodeSandbox]:
    """A fresh-state code sandbox of `lang` with a 2 s time limit."""
    with CodeSandbox(lang, timeout=2.0) as b:
        yield b
