"""Tools (MessagePack both ways), tool failures, and the per-run limits: time, heap, output."""

from __future__ import annotations

from typing import Any

import pytest

from snapcell import ArgumentError, CodeSandbox, ConfigurationError

NESTED = {"hits": [{"title": "kvm", "score": 0.5, "tags": ["a", "b"], "raw": b"\x00\x01"},
                   {"title": "pvm", "score": 1, "tags": [], "meta": None}], "total": 2}


def search(q: str, opts: dict[str, Any]) -> dict[str, Any]:
    assert q == "kvm" and opts == {"limit": 2, "deep": {"x": [1, 2.5, True, None]}}
    return NESTED


def echo(*args: Any) -> list[Any]:
    return list(args)


def failing(x: int) -> int:
    raise ValueError(f"no result for {x}")


TOOLS = {"search": search, "echo": echo, "failing": failing, "unserialisable": lambda: {1, 2}}


def test_tool_call_nested_both_ways(lang: str) -> None:
    with CodeSandbox(lang, tools=TOOLS) as box:
        if lang == "js":
            r = box.run("const r = search('kvm', {limit: 2, deep: {x: [1, 2.5, true, null]}});\n"
                        "console.log(r.hits.length, r.hits[0].title, r.hits[0].raw[1]); r")
            assert r.stdout == "2 kvm 1\n"
            assert r.value == NESTED
        else:
            r = box.run("local r = search('kvm', {limit = 2, deep = {x = {1, 2.5, true}}})\n"
                        "print(#r.hits, r.hits[1].title, r.hits[1].raw:byte(2)) return r")
            assert r.error is not None   # Lua drops the nil in {1, 2.5, true, nil}: assertion in the tool
            r = box.run("return echo('kvm', {limit = 2, deep = {x = {1, 2.5, true}}}, 3)")
            assert r.value == ["kvm", {"limit": 2, "deep": {"x": [1, 2.5, True]}}, 3]
            r = box.run("local r = echo({hits = {{title = 'kvm'}}}) return r[1].hits[1].title")
            assert r.value == "kvm"
        assert box.tool_calls >= 1


def test_tool_that_raises_is_a_language_exception(lang: str) -> None:
    with CodeSandbox(lang, tools=TOOLS) as box:
        if lang == "js":
            r = box.run("let seen; try { failing(3) } catch (e) { seen = [e.name, e.message] } seen")
            assert r.value == ["ValueError", "failing: no result for 3"]
            r = box.run("failing(4)")
            assert r.error is not None and r.error.type == "ValueError"
            assert "no result for 4" in r.error.message
        else:
            r = box.run("local ok, err = pcall(failing, 3) return {ok, err}")
            assert r.value[0] is False and "ValueError: no result for 3" in r.value[1]
            r = box.run("failing(4)")
            assert r.error is not None and "no result for 4" in r.error.message
        r = box.run("unserialisable()")
        assert r.error is not None and "cannot be passed" in r.error.message
        assert box.run("echo(1, 'two')").value == [1, "two"]


def test_tool_arguments_that_cannot_cross(lang: str) -> None:
    with CodeSandbox(lang, tools=TOOLS) as box:
        r = box.run("echo(() => 1)" if lang == "js" else "echo(print)")
        assert r.error is not None and "cannot be passed" in r.error.message


def test_bad_tools_are_refused() -> None:
    with pytest.raises(ArgumentError):
        CodeSandbox("js", tools={"not an identifier": echo})
    with pytest.raises(ArgumentError):
        CodeSandbox("js", tools={"x": 3})
    with pytest.raises(ConfigurationError):
        CodeSandbox("ruby")
    with pytest.raises(ConfigurationError):
        CodeSandbox("js", memory_limit=0)
    with pytest.raises(ConfigurationError):
        CodeSandbox("js", timeout=-1)


def test_infinite_loop_cut_by_timeout_then_box_works(lang: str) -> None:
    with CodeSandbox(lang, timeout=0.2) as box:
        r = box.run("for (;;) {}" if lang == "js" else "while true do end")
        assert r.error is not None and r.error.type == "TimeoutError"
        assert 0.2 <= r.duration < 5
        assert box.run("40 + 2").value == 42
        spin = "let i = 0; while (true) i++" if lang == "js" else "local i = 0 repeat i = i + 1 until false"
        r = box.run(spin, timeout=0.1)
        assert r.error is not None and r.error.type == "TimeoutError"
        assert box.run("1 + 1").value == 2


def test_memory_exhaustion_is_a_language_error(lang: str) -> None:
    with CodeSandbox(lang, memory_limit=16 << 20) as box:
        code = ("const a = []; while (true) a.push(new Array(10000).fill(1.5))" if lang == "js"
                else "local t = {} local i = 0 while true do i = i + 1 t[i] = {1, 2, 3, 4, 5, 6} end")
        r = box.run(code)
        assert r.error is not None
        if lang == "js":
            assert (r.error.type, r.error.message) == ("InternalError", "out of memory")
        else:
            assert (r.error.type, r.error.message) == ("MemoryError", "not enough memory")
        assert box.run("'still ' + 'fine'" if lang == "js" else "'still ' .. 'fine'").value == "still fine"


def test_output_over_the_cap(lang: str) -> None:
    with CodeSandbox(lang, max_output=1000) as box:
        code = ("for (let i = 0; ; i++) console.log('line', i)" if lang == "js"
                else "local i = 0 while true do print('line', i) i = i + 1 end")
        r = box.run(code)
        assert r.output_truncated
        assert len(r.stdout.encode()) == 1000
        assert r.error is not None and "output limit" in r.error.message
        r = box.run("console.log('ok'); 1" if lang == "js" else "print('ok') return 1")
        assert (r.stdout, r.output_truncated, r.value) == ("ok\n", False, 1)


def test_code_too_large_for_the_input_buffer() -> None:
    with CodeSandbox("js") as box:
        with pytest.raises(ArgumentError):
            box.run("1;" * (1 << 20))
        assert box.run("1").value == 1
