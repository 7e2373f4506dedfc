"""Streamed output (`run(..., on_output=callback)`): every guest's output reaches the host while
the code runs; a run without a callback, or that prints nothing, is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.code.contexts import ContextStore
from snapcell.code.streaming import StreamingCodeSandbox


def test_python_output_arrives_while_the_code_runs() -> None:
    seen: list[tuple[str, str, int]] = []
    with StreamingCodeSandbox("python", tools={"progress": lambda: len(seen)}) as box:
        def on_output(stream: str, text: str) -> None:
            seen.append((stream, text, len(seen)))
        r = box.run("import sys\nprint('first')\nn = progress()\nprint('second', n)\n"
                    "sys.stderr.write('warn\\n')\nprint('tail', end='')\n'v'", on_output=on_output)
        # the code itself saw the first chunk delivered before it printed the second
        assert r.ok and r.value == "v" and r.stdout == "first\nsecond 1\ntail"
        assert [(s, t) for s, t, _ in seen] == [("stdout", "first\n"), ("stdout", "second 1\n"),
                                                ("stderr", "warn\n"), ("stdout", "tail")]
        assert box.tools == {"progress": box.tools["progress"]}
        quiet = box.run("print('x')\n1")            # no callback: nothing streamed
        assert quiet.stdout == "x\n" and len(seen) == 4
        r = box.run("print('a')\nraise ValueError('b')", on_output=on_output)
        assert r.error is not None and seen[-1][:2] == ("stdout", "a\n")


@pytest.mark.parametrize("lang, code", [
    ("js", "console.log('first'); const n = progress(); console.log('second', n);\n"
           "console.error('warn'); console.log('\u00e9t\u00e9'); console.log('tail'); 'v'"),
    ("lua", "print('first') local n = progress() print('second', n)\n"
            "print('\u00e9t\u00e9') print('tail') return 'v'"),
], ids=["js", "lua"])
def test_js_and_lua_output_arrives_while_the_code_runs(lang: str, code: str) -> None:
    seen: list[tuple[str, str]] = []
    with StreamingCodeSandbox(lang, tools={"progress": lambda: len(seen)}) as box:
        r = box.run(code, on_output=lambda s, t: seen.append((s, t)))
        # the code saw the first line delivered before it printed the second
        assert r.ok and r.value == "v", r
        assert seen[:2] == [("stdout", "first\n"), ("stdout", "second" + " \t"[lang == "lua"]
                                                    + "1\n")]
        assert "".join(t for s, t in seen if s == "stdout") == r.stdout
        assert "".join(t for s, t in seen if s == "stderr") == r.stderr
        assert "été\n" in r.stdout
        assert box.tools == {"progress": box.tools["progress"]}   # (the stream tool is not one)
        calls = box.tool_calls
        assert box.run("1 + 1" if lang == "js" else "return 1 + 1",
                       on_output=lambda s, t: seen.append((s, t))).value == 2
        assert box.tool_calls == calls                 # printing nothing: no host call
        r = box.run("console.log('x'); 1" if lang == "js" else "print('x') return 1")
        assert r.stdout == "x\n" and box.tool_calls == calls     # no callback: not streamed


def test_js_partial_lines_and_the_two_streams_keep_their_order() -> None:
    seen: list[tuple[str, str]] = []
    with StreamingCodeSandbox("js") as box:
        # stderr's line comes between stdout's, as written
        r = box.run("console.log('a'); console.error('b'); console.log('\u00e9'); 1",
                    on_output=lambda s, t: seen.append((s, t)))
        assert r.value == 1
        assert seen == [("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "é\n")]
        seen.clear()
        r = box.run("console.log('x'.repeat(3000)); for(;;){}", timeout=0.3,
                    on_output=lambda s, t: seen.append((s, t)))
        assert r.error is not None and r.error.type == "TimeoutError"
        assert seen == [("stdout", "x" * 3000 + "\n")]     # what ran before the cut arrived


def test_context_runs_stream(tmp_path: Path) -> None:
    ctx = ContextStore(tmp_path).create("python", "t")
    got: list[str] = []
    ctx.run("x = 1")
    r = ctx.run("for i in range(3): print(i + x)", on_output=lambda s, t: got.append(t))
    assert got == ["1\n", "2\n", "3\n"] and r.stdout == "1\n2\n3\n"
    ctx.close()


def test_a_run_that_prints_nothing_makes_no_host_call() -> None:
    with StreamingCodeSandbox("python") as box:
        before = box.tool_calls
        for _ in range(3):
            assert box.run("x = [i for i in range(100)]\nlen(x)",
                           on_output=lambda s, t: None).value == 100
        assert box.tool_calls == before
        box.run("print(1)\nprint(2, end='')", on_output=lambda s, t: None)
        assert box.tool_calls == before + 2           # one per line, one for the tail


@given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=6))
def test_relay_decodes_chunks_as_the_result_is_decoded(data: bytes, cuts: list[int]) -> None:
    """However the guest's bytes are cut into chunks, the texts add up to the result's
    decoding (UTF-8, invalid bytes replaced); anything malformed is ignored."""
    from snapcell.code.streaming import _Relay
    got: list[str] = []
    relay = _Relay()
    relay.start(lambda s, t: got.append(t))
    edges = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for a, b in zip(edges, edges[1:]):
        relay([[1, data[a:b]], [3, b"x"], "junk", [2]])
    relay.end()
    assert "".join(got) == data.decode("utf-8", "replace")
