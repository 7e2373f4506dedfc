"""Streamed output (`run(..., on_output=callback)`): Python output reaches the host while the
code runs; JS and Lua hand it over when the run ends; a run without a callback is unchanged."""

from __future__ import annotations

from pathlib import Path

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


def test_js_and_lua_deliver_at_the_end() -> None:
    for lang, code in (("js", "console.log('j'); 1"), ("lua", "print('l') return 1")):
        got: list[tuple[str, str]] = []
        with StreamingCodeSandbox(lang) as box:
            r = box.run(code, on_output=lambda s, t, got=got: got.append((s, t)))
        assert r.value == 1 and got == [("stdout", r.stdout)]


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
