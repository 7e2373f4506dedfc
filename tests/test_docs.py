"""The documentation runs as written: every ```python block of README.md and docs/*.md is executed.

Blocks of one file share a namespace and run in order, from a scratch directory in which `build/`
points at the checkout's built guests (so relative paths in the docs work and nothing is written
into the checkout). A block opts out only with a first-line marker ``# doc: no-run <reason>``; the
reason is required. Blocks may read ``SNAPCELL_REGISTRY`` (the test starts a real local registry
and sets it; a reader uses their own, `127.0.0.1:5000` by default). The debugging walkthrough's
sandbox waits for gdb: the test attaches a real gdb, as the text tells the reader to.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import shutil
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_registry import Registry, _start, _stop

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
NO_RUN = re.compile(r"^# doc: no-run\b[ \t]*(.*)$")
NUMBER = re.compile(r"~?\d[\d,.]*\s?(?:µs|ms)\b")
ROW_NAME = re.compile(r"`([A-Za-z][A-Za-z0-9_]*)`")
BENCH_KEY = re.compile(r'(?:r|out)\[(f?)"([^"]*)"\]\s*=')


ROW_LITERAL = re.compile(r'^\s*"([a-z][A-Za-z0-9_]*)": row\(', re.M)   # {"name": row(...)}
ROW_TUPLE = re.compile(r'\(\s*"([a-z][A-Za-z0-9_]*)", \[')          # for name, cmd in (("name", [...
ROW_TIMED = re.compile(r'^\s*"([a-z][A-Za-z0-9_]*)": lambda\b', re.M)    # interleaved({"name": lambda


def benchmark_rows() -> list[re.Pattern[str]]:
    """The row names `snapcell bench` writes (snapcell/bench/*.py; f-string parts become
    wildcards)."""
    rows = []
    sources = sorted((ROOT / "snapcell" / "bench").glob("*.py"))
    for src in sources:
        text = src.read_text()
        for is_f, key in BENCH_KEY.findall(text):
            parts = re.split(r"\{[^}]*\}", key) if is_f else [key]
            rows.append(re.compile("[A-Za-z0-9]+".join(re.escape(p) for p in parts)))
        rows += [re.compile(re.escape(k)) for k in
                 ROW_LITERAL.findall(text) + ROW_TUPLE.findall(text) + ROW_TIMED.findall(text)]
    return rows


ROWS = benchmark_rows()


def names_a_row(line: str) -> bool:
    """Whether a line names a benchmark row in backticks."""
    return any(r.fullmatch(name) for name in ROW_NAME.findall(line) for r in ROWS)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, source) of every ```python block of a markdown text."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


def opt_out_reason(source: str) -> str | None:
    """The reason of a block's `# doc: no-run` marker, '' for a marker without one, None if none."""
    first = source.lstrip("\n").split("\n", 1)[0]
    m = NO_RUN.match(first)
    return None if m is None else m.group(1).strip()


def test_block_parser_finds_blocks_and_markers() -> None:
    text = "x\n```python\na = 1\n```\n```sh\nls\n```\n```python\n# doc: no-run needs a GPU\nb\n```\n"
    blocks = python_blocks(text)
    assert [src for _, src in blocks] == ["a = 1\n", "# doc: no-run needs a GPU\nb\n"]
    assert blocks[0][0] == 3
    assert opt_out_reason(blocks[0][1]) is None
    assert opt_out_reason(blocks[1][1]) == "needs a GPU"
    assert opt_out_reason("# doc: no-run\nx\n") == ""


def test_docs_have_python_blocks() -> None:
    counts = {p.name: len(python_blocks(p.read_text())) for p in DOCS}
    assert counts["README.md"] >= 3
    assert sum(counts.values()) >= 7


@pytest.fixture(scope="module")
def doc_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = _start(tmp_path_factory.mktemp("doc-registry"))
    try:
        yield reg
    finally:
        _stop(reg)


def _attach_gdb(ns: dict[str, object]) -> None:
    """The walkthrough's call waits for gdb on port 1234: attach, break in `scale`, check the
    arguments, change the result (as the walkthrough does) and detach."""
    t = ns["t"]
    assert isinstance(t, threading.Thread)
    gdb = shutil.which("gdb")
    assert gdb is not None, "gdb is required (scripts/bootstrap.sh installs it)"
    out = subprocess.run(
        [gdb, "-q", "-nx", "-batch", "-ex", "target remote 127.0.0.1:1234", "-ex", "break scale",
         "-ex", "continue", "-ex", "next", "-ex", "print product", "-ex", "set var product = 100",
         "-ex", "detach", str(ROOT / "build/guests/simpleguest-debug.elf")],
        capture_output=True, text=True, timeout=60)
    t.join(30)
    assert not t.is_alive()
    assert "scale (v=5, factor=3)" in out.stdout, out.stdout + out.stderr
    first_stop = out.stdout.split("Breakpoint 1 at")[0]
    assert "Compute (a=" in first_stop, out.stdout      # the first stop the text promises
    assert "$1 = 15" in out.stdout, out.stdout + out.stderr


EPILOGUES = {"debugging.md": _attach_gdb}
# What the blocks print that the prose promises (the value gdb set wins; the errors are readable).
EXPECTED_OUTPUT = {
    "debugging.md": ["result: 101"],
    "README.md": ["argument 0 (i32): 2147483648 is out of range", "invalid opcode",
                  "Snapshot(generation 1, initialised"],
}


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_doc_runs_as_written(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], kvm_ok: None, simpleguest: str,
                             doc_registry: Registry) -> None:
    blocks = python_blocks(doc.read_text())
    if not blocks:
        return
    for name in ("simpleguest-debug.elf", "js.elf", "lua.elf"):
        assert (ROOT / "build/guests" / name).exists(), f"build/guests/{name} missing: run make guests"
    (tmp_path / "build").symlink_to(ROOT / "build")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SNAPCELL_REGISTRY", doc_registry.host)
    ns: dict[str, object] = {"__name__": f"doc_{doc.stem}"}
    for line, source in blocks:
        reason = opt_out_reason(source)
        if reason is not None:
            assert reason, f"{doc.name}:{line}: '# doc: no-run' needs a reason"
            continue
        # top-level `await` / `async with` run as in an asyncio REPL (docs/serving.md)
        code = compile(source, f"{doc.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        try:
            with warnings.catch_warnings():     # the docs use no deprecated spelling
                warnings.filterwarnings("error", category=DeprecationWarning, module="doc_")
                if code.co_flags & inspect.CO_COROUTINE:
                    asyncio.run(eval(code, ns))
                else:
                    exec(code, ns)
        except BaseException as e:
            raise AssertionError(f"{doc.name}, block at line {line} failed: {e!r}") from e
    epilogue = EPILOGUES.get(doc.name)
    if epilogue is not None:
        epilogue(ns)
    for value in ns.values():
        close = getattr(value, "close", None)
        if callable(close) and type(value).__module__.startswith("snapcell") \
                and not inspect.iscoroutinefunction(close):     # an async pool closed itself
            close()
    out = capsys.readouterr().out
    for expected in EXPECTED_OUTPUT.get(doc.name, []):
        assert expected in out, f"{doc.name}: expected {expected!r} in the output:\n{out}"


def _quoted_numbers(doc: Path) -> list[str]:
    bad = []
    for i, line in enumerate(doc.read_text().splitlines(), 1):
        if NUMBER.search(line) and not names_a_row(line):
            bad.append(f"{doc.name}:{i}: {line.strip()}")
    return bad


def test_every_quoted_number_names_its_benchmark_row() -> None:
    bad = [b for doc in DOCS if doc.name != "benchmarks.md" for b in _quoted_numbers(doc)]
    assert bad == []


def test_number_check_flags_an_unattributed_number(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("fast: ~0.07 ms pooled\nok: ~0.07 ms (`from_snapshot_first_result_pooled`)\n"
                   "made up: 3 µs (`no_such_row`)\nok: 61 µs (`restore_then_call_16MiB`)\n")
    assert _quoted_numbers(doc) == ["x.md:1: fast: ~0.07 ms pooled", "x.md:3: made up: 3 µs (`no_such_row`)"]
