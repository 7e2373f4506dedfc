"""Code sandboxes on real KVM, both languages: values, functions, closures, strings, regexes,
JSON, errors with line numbers, output capture."""

from __future__ import annotations

import pytest

from snapcell import CodeError, CodeSandbox, RunResult

# (js, lua) snippets with the expected value
CASES = {
    "expression": ("6 * 7", "6 * 7", 42),
    "float": ("1 / 4", "1 / 4", 0.25),
    "string": ("'snap' + 'cell'", "'snap' .. 'cell'", "snapcell"),
    "function": ("function sq(x) { return x * x } sq(9)",
                 "local function sq(x) return x * x end return sq(9)", 81),
    "closure": ("function counter() { let n = 0; return () => ++n }\n"
                "const c = counter(); c(); c(); c()",
                "local function counter() local n = 0 return function() n = n + 1 return n end end\n"
                "local c = counter() c() c() return c()", 3),
    "list": ("[1, 'a', null, true, [2.5]]", "{1, 'a', false, true, {2.5}}",
             None),
    "dict": ("({name: 'x', nested: {k: [1, 2]}})", "{name = 'x', nested = {k = {1, 2}}}",
             {"name": "x", "nested": {"k": [1, 2]}}),
    "regex/patterns": ("'kvm-2026-12'.match(/(\\d+)-(\\d+)/).slice(1).map(Number)",
                       "local y, m = ('kvm-2026-12'):match('(%d+)-(%d+)') return {tonumber(y), tonumber(m)}",
                       [2026, 12]),
    "json/strings": ("JSON.parse(JSON.stringify({a: [1, {b: 'c'}]})).a[1].b",
                     "string.format('%s=%d', ('a,b'):gsub(',', ';'))", None),
    "unicode": ("'héllo ✓'.toUpperCase()", "utf8.len('héllo ✓')", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_values(box: CodeSandbox, lang: str, case: str) -> None:
    js, lua, want = CASES[case]
    r = box.run(js if lang == "js" else lua)
    assert r.ok, r.error
    if case == "list":
        want = [1, "a", None, True, [2.5]] if lang == "js" else [1, "a", False, True, [2.5]]
    elif case == "json/strings":
        want = "c" if lang == "js" else "a;b=1"
    elif case == "unicode":
        want = "HÉLLO ✓" if lang == "js" else 7
    assert r.value == want


def test_stdout_and_stderr(lang: str) -> None:
    with CodeSandbox(lang) as box:
        if lang == "js":
            r = box.run("console.log('out', 1, [2, 3]); console.error('err'); console.warn('w'); 5")
            assert (r.stdout, r.stderr, r.value) == ("out 1 2,3\n", "err\nw\n", 5)
        else:
            r = box.run("print('out', 1, nil) print(2.5) return 5")
            assert (r.stdout, r.stderr, r.value) == ("out\t1\tnil\n2.5\n", "", 5)


def test_syntax_error_has_line(box: CodeSandbox, lang: str) -> None:
    code = "let a = 1;\nlet b = 2;\nlet = ;" if lang == "js" else "local a = 1\nlocal b = 2\nlocal = 3"
    r = box.run(code)
    assert isinstance(r.error, CodeError)
    assert r.error.type == "SyntaxError"
    assert r.error.line == 3
    assert r.value is None


def test_runtime_error_type_message_stack(box: CodeSandbox, lang: str) -> None:
    if lang == "js":
        code = ("function inner() {\n  return undefinedThing + 1;\n}\n"
                "function outer() { return inner() }\nouter()")
        r = box.run(code)
        assert r.error is not None and r.error.type == "ReferenceError"
        assert "undefinedThing" in r.error.message
        assert "inner" in r.error.stack and "main.js:2" in r.error.stack and "outer" in r.error.stack
    else:
        code = ("local function inner()\n  return nil + 1\nend\n"
                "local function outer() return inner() end\nreturn outer()")
        r = box.run(code)
        assert r.error is not None and r.error.type == "RuntimeError"
        assert "arithmetic" in r.error.message
        assert "main.lua:2" in r.error.stack
    assert r.error.line == 2
    with pytest.raises(CodeError):
        r.unwrap()


def test_thrown_custom_errors(box: CodeSandbox, lang: str) -> None:
    if lang == "js":
        r = box.run("class MyErr extends Error { constructor(m) { super(m); this.name = 'MyErr' } }\n"
                    "throw new MyErr('custom')")
        assert (r.error.type, r.error.message) == ("MyErr", "custom")  # type: ignore[union-attr]
        r = box.run("throw 42")
        assert r.error is not None and "42" in r.error.message
    else:
        r = box.run("error({code = 7})")
        assert r.error is not None and "table" in r.error.message
        r = box.run("error('plain', 0)")
        assert r.error is not None and r.error.message == "plain"


def test_values_that_cannot_cross(box: CodeSandbox, lang: str) -> None:
    r = box.run("(function f() {})" if lang == "js" else "return print")
    assert r.error is not None and "cannot be passed" in r.error.message
    r = box.run("const a = []; a.push(a); a" if lang == "js" else "local t = {} t[1] = t return t")
    assert r.error is not None and "deep" in r.error.message
    assert box.run("1").value == 1


def test_bytes_and_big_values(box: CodeSandbox, lang: str) -> None:
    if lang == "js":
        assert box.run("new Uint8Array([0, 255, 7])").value == b"\x00\xff\x07"
        assert box.run("2 ** 60").value == 2 ** 60
        assert box.run("12345678901234567890n").error is not None      # beyond int64
        assert box.run("'x'.repeat(100000)").value == "x" * 100000
    else:
        assert box.run("'\\0\\255\\7'").value == b"\x00\xff\x07"       # not UTF-8: bytes
        assert box.run("math.maxinteger").value == 2 ** 63 - 1
        assert box.run("('x'):rep(100000)").value == "x" * 100000


def test_async_js() -> None:
    with CodeSandbox("js") as box:
        r = box.run("async function f() { await null; return 7 } f()")
        assert r.value == 7
        r = box.run("Promise.reject(new RangeError('nope'))")
        assert r.error is not None and r.error.type == "RangeError"


def test_result_object(box: CodeSandbox) -> None:
    r = box.run("1")
    assert isinstance(r, RunResult) and r.ok and r.duration > 0
    assert r.to_dict()["value"] == 1
