"""Tools by keyword, `async def` tools, and tool calls bounded by the run's time limit
(issue 24 "tools called by keyword", issue 28 item 5)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from snapcell import CodeSandbox

CALLS = {"js": "search({query: 'kvm', limit: 2})", "lua": "return search({query = 'kvm', limit = 2})",
         "python": "search(query='kvm', limit=2)"}


@pytest.fixture(params=["js", "lua", "python"])
def lang(request: pytest.FixtureRequest) -> str:
    """Each language in turn, Python included."""
    return str(request.param)


def search(query: str, limit: int = 10) -> list[str]:
    return [f"{query}-{i}" for i in range(limit)]


async def asearch(query: str, limit: int = 1) -> list[str]:
    await asyncio.sleep(0.01)
    return [query.upper()] * limit


def echo(*args: Any) -> list[Any]:
    return list(args)


def test_tools_by_keyword(lang: str) -> None:
    with CodeSandbox(lang, tools={"search": search, "echo": echo, "asearch": asearch}) as box:
        assert box.run(CALLS[lang]).value == ["kvm-0", "kvm-1"]
        if lang != "python":                   # one object whose keys are no parameters: positional
            code = "echo({query: 'kvm'})" if lang == "js" else "return echo({query = 'kvm'})"
            assert box.run(code).value == [{"query": "kvm"}]
            code = ("search({query: 'a', nope: 1})" if lang == "js"
                    else "return search({query = 'a', nope = 1})")
            assert box.run(code).value[0].startswith("{")   # the object went as `query`
        else:
            assert box.run("search('kvm', limit=1)").value == ["kvm-0"]
            assert box.run("echo({'query': 'kvm'})").value == [{"query": "kvm"}]
            r = box.run("search(query='a', nope=1)")
            assert r.error is not None and r.error.type == "TypeError" and "nope" in r.error.message
        code = {"js": "asearch({query: 'x', limit: 2})", "lua": "return asearch('x', 2)",
                "python": "asearch('x', limit=2)"}[lang]
        assert box.run(code).value == ["X", "X"]        # async def: awaited on the host


def test_a_tool_cannot_outlast_the_time_limit(lang: str) -> None:
    started, finished = threading.Event(), threading.Event()
    late: list[str] = []

    def slow() -> str:
        started.set()
        time.sleep(3)
        finished.set()
        late.append("late")
        return "LATE RESULT"

    async def aslow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            late.append("cancelled")
            raise
        return "LATE RESULT"

    with CodeSandbox(lang, tools={"slow": slow, "aslow": aslow, "echo": echo}, timeout=1.0,
                     keep_state=True) as box:
        assign = {"js": "globalThis.x = 41; x", "lua": "x = 41 return x", "python": "x = 41\nx"}[lang]
        assert box.run(assign).value == 41
        r = box.run("slow()")
        assert r.error is not None and r.error.type == "TimeoutError", r
        assert started.is_set() and not finished.is_set()   # ended while the tool still ran
        r = box.run("aslow()")
        assert r.error is not None and r.error.type == "TimeoutError"
        # the sandbox was reset (the session's state is gone) and is usable
        read = {"js": "typeof x", "lua": "return type(x)", "python": "'x' in globals()"}[lang]
        assert box.run(read).value in ("undefined", "nil", False)
        assert box.run("echo(1, 2)" if lang != "lua" else "return echo(1, 2)").value == [1, 2]
        assert finished.wait(5)
        # the late result went nowhere: later runs see only their own
        r = box.run("echo('after')" if lang != "lua" else "return echo('after')")
        assert r.value == ["after"] and "LATE" not in repr(r)
    deadline = time.monotonic() + 5
    while "cancelled" not in late and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "cancelled" in late            # the async tool's task was cancelled at the deadline


def test_a_run_override_timeout_bounds_tools_too() -> None:
    done = threading.Event()

    def nap(seconds: float) -> None:
        time.sleep(seconds)
        if seconds > 1:
            done.set()

    with CodeSandbox("python", tools={"nap": nap}, timeout=None) as box:
        assert box.run("nap(0.01)").ok                      # no limit: runs inline
        r = box.run("nap(2)", timeout=0.3)
        assert r.error is not None and r.error.type == "TimeoutError"
        assert not done.is_set()
        r = box.run("try:\n    nap(0.01)\n    ok = 1\nexcept Exception as e:\n    ok = e\nok")
        assert r.value == 1
