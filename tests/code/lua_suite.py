"""Running Lua 5.4's own test suite (testes/ in the fetched sources) inside a code sandbox and
natively, file by file (shared by the test and docs/code-sandboxes.md's table)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTES = ROOT / "build" / "third_party" / "lua" / "testes"
NATIVE_LUA = ROOT / "build" / "native" / "lua"
# all.lua drives the others through dofile; heavy.lua needs gigabytes (its own header says so)
SKIP = {"all.lua", "heavy.lua"}


def suite_files() -> list[str]:
    """The suite's files, sorted."""
    return sorted(p.name for p in TESTES.glob("*.lua") if p.name not in SKIP)


MODULES = ("tracegc", "bwcoercion")     # what the files `require` from the suite itself


def _long_string(text: bytes) -> bytes:
    level = b"=" * 8
    while b"]" + level + b"]" in text:
        level += b"="
    return b"[" + level + b"[\n" + text + b"]" + level + b"]"


def sandbox_program(name: str) -> bytes:
    """The file as one chunk for the sandbox (bytes: the suite is partly Latin-1): the suite's
    own modules served to `require` from memory, `io.write` to the captured stdout, soft and
    portable mode as the suite defines them."""
    mods = b", ".join(b"[\"" + m.encode() + b"\"] = " + _long_string((TESTES / f"{m}.lua").read_bytes())
                      for m in MODULES)
    body = (TESTES / name).read_bytes()
    if body.startswith(b"#"):
        body = b"--" + body
    return (b"_soft = true _port = true\n"
            b"local mods = {" + mods + b"}\n"
            b"package = {loaded = {_G = _G, string = string, math = math, table = table,\n"
            b"  coroutine = coroutine, utf8 = utf8, os = os}, path = './?.lua'}\n"
            b"function require(n)\n"
            b"  if package.loaded[n] == nil then\n"
            b"    local f = assert(load(assert(mods[n], 'no module ' .. n), '=' .. n .. '.lua'))\n"
            b"    package.loaded[n] = f(n) or true\n"
            b"  end\n"
            b"  return package.loaded[n]\n"
            b"end\n"
            b"io = {write = function(...) local t = table.pack(...)\n"
            b"  for i = 1, t.n do t[i] = tostring(t[i]) end print(table.concat(t)) end}\n"
            b"io.stderr = {write = function(self, ...) io.write(...) end}\n"
            b"io.stdout = io.stderr\n"
            b"local f = assert(load(" + _long_string(body) + b", '=" + name.encode() + b"'))\n"
            b"f()\n")


def run_native(name: str, timeout: float = 60) -> bool:
    """Whether the file passes under the native lua built from the same sources."""
    proc = subprocess.run([str(NATIVE_LUA), "-e", "_soft=true _port=true", name], cwd=TESTES,
                          capture_output=True, timeout=timeout)
    return proc.returncode == 0
