"""The snippet corpus (tests/code/corpus/*.toml): realistic snippets of the kind agents write,
in Python, JavaScript and Lua, each run in a code sandbox on real KVM against its expected value
(and output). A snippet that needs something the sandbox leaves out expects the error that
teaches: its type and a part of its message.

A snippet is a TOML table `[[snippet]]` with `name`, `code` and one expectation:
`value = ...` (the run's value; `none = true` for None/null/nil), or `error = "Type"` with
`message = "part of the message"`; optional `stdout` (exact) and `timeout` (seconds)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapcell import CodeSandbox

CORPUS = Path(__file__).parent / "corpus"
LANG_OF = {"python": "python", "js": "js", "lua": "lua"}
KEYS = {"name", "code", "value", "none", "error", "message", "stdout", "timeout"}


def load() -> list[tuple[str, dict[str, Any]]]:
    """Every snippet as (language, table), checked for shape."""
    out = []
    for path in sorted(CORPUS.glob("*.toml")):
        lang = LANG_OF[path.stem]
        for s in tomllib.loads(path.read_text())["snippet"]:
            assert set(s) <= KEYS, (path.name, s.get("name"), set(s) - KEYS)
            assert ("value" in s) + ("none" in s) + ("error" in s) == 1, (path.name, s["name"])
            out.append((lang, s))
    return out


SNIPPETS = load()


def test_the_corpus_is_large_and_names_are_unique() -> None:
    assert len(SNIPPETS) >= 100
    for lang in LANG_OF.values():
        assert sum(1 for la, _ in SNIPPETS if la == lang) >= 10, lang
    names = [(la, s["name"]) for la, s in SNIPPETS]
    assert len(names) == len(set(names))


@pytest.fixture(scope="module")
def boxes() -> Iterator[dict[str, CodeSandbox]]:
    """One fresh-state sandbox per language (each run starts from the warm snapshot)."""
    made = {lang: CodeSandbox(lang, timeout=5.0) for lang in LANG_OF.values()}
    try:
        yield made
    finally:
        for b in made.values():
            b.close()


@pytest.mark.parametrize(("lang", "snippet"), SNIPPETS,
                         ids=[f"{la}-{s['name']}" for la, s in SNIPPETS])
def test_snippet(boxes: dict[str, CodeSandbox], lang: str, snippet: dict[str, Any]) -> None:
    box = boxes[lang]
    r = box.run(snippet["code"], timeout=float(snippet.get("timeout", 5.0)))
    if "error" in snippet:
        assert r.error is not None, (r.value, r.stdout)
        assert r.error.type == snippet["error"], r.error
        assert snippet["message"] in r.error.message, r.error
    else:
        assert r.error is None, f"{r.error.type}: {r.error.message}\n{r.error.stack}"
        assert r.value == (None if snippet.get("none") else snippet["value"])
    if "stdout" in snippet:
        assert r.stdout == snippet["stdout"]
