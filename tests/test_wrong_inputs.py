"""A corpus of wrong inputs for every public constructor: each is answered by a snapcell error
(so `except SnapcellError` catches it) whose message names the argument and says what to give
instead, and changes nothing. Optional arguments are keyword-only, with a DeprecationWarning for
positional use (one release)."""

from __future__ import annotations

import re
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snapcell import (
    CodeSandbox,
    HostFunctions,
    MultiUseSandbox,
    SandboxConfiguration,
    SnapcellError,
    Snapshot,
    UninitializedSandbox,
)
from snapcell.errors import (
    ArgumentError,
    ConfigurationError,
    DebugPortInUse,
    GuestLoadError,
    HostFunctionError,
    UnknownFunctionError,
)
from snapcell.types import I32


def _add(a: I32, b: I32) -> I32:
    return a + b


def _unannotated(a):  # type: ignore[no-untyped-def]
    return a


def _list_param(a: list) -> I32:  # type: ignore[type-arg]
    return 0


ELF = "build/guests/simpleguest.elf"
# (what is called, the error class, regexes the message must match)
CORPUS: list[tuple[str, Callable[[], Any], type[SnapcellError], list[str]]] = [
    ("guest of a wrong type", lambda: UninitializedSandbox(42), ArgumentError,
     ["guest must be a path, bytes or GuestBinary, got int", "snapcell guest build"]),
    ("guest file missing", lambda: UninitializedSandbox("no/such.elf"), GuestLoadError,
     ["cannot read guest 'no/such.elf'", "No such file"]),
    ("guest not an ELF", lambda: UninitializedSandbox(b"#!/bin/sh\n"), GuestLoadError, ["not an ELF"]),
    ("guest a text file", lambda: UninitializedSandbox(__file__), GuestLoadError,
     [re.escape(__file__), "snapcell guest build"]),
    ("config of a wrong type", lambda: UninitializedSandbox(ELF, config={"heap_size": 1}), ArgumentError,
     ["config must be a SandboxConfiguration, got dict", r"config=SandboxConfiguration\(heap_size"]),
    ("host functions in config's place",
     lambda: UninitializedSandbox(ELF, config=HostFunctions()), ArgumentError,  # type: ignore[arg-type]
     ["config must be a SandboxConfiguration, got HostFunctions", "belongs in host_functions="]),
    ("host_functions of a wrong type", lambda: UninitializedSandbox(ELF, host_functions={"f": _add}),
     ArgumentError, ["host_functions must be a HostFunctions, got dict", r"HostFunctions\(\).register"]),
    ("too many positional", lambda: UninitializedSandbox(ELF, None, None, None), ArgumentError,
     ["takes at most 2 optional arguments", "by keyword"]),
    ("from_snapshot of a path", lambda: MultiUseSandbox.from_snapshot("snaps/"), ArgumentError,
     ["snapshot must be a Snapshot, got str", r"Snapshot.load\(directory, tag\)"]),
    ("from_snapshot: config in host_functions' place",
     lambda: MultiUseSandbox.from_snapshot(_snapshot(), host_functions=SandboxConfiguration()),
     ArgumentError, ["host_functions must be a HostFunctions, got SandboxConfiguration",
                     "belongs in config="]),
    ("from_snapshot: host functions missing", lambda: MultiUseSandbox.from_snapshot(
        _snapshot(), host_functions=HostFunctions.empty()), SnapcellError, ["missing: HostAdd"]),
    ("config: unknown field", lambda: SandboxConfiguration(heap=1 << 20), ConfigurationError,
     ["no field 'heap'", "did you mean heap_size=", "Fields: input_size"]),
    ("config: size as text", lambda: SandboxConfiguration(heap_size="16M"), ConfigurationError,
     ["heap_size must be an int", "got str '16M'", "heap_size=16 << 20"]),
    ("config: size not a page multiple", lambda: SandboxConfiguration(heap_size=5000),
     ConfigurationError, ["heap_size must be a multiple of 4096", "got 5000"]),
    ("config: small stack", lambda: SandboxConfiguration(stack_size=4096), ConfigurationError,
     ["stack_size must be at least 16 KiB"]),
    ("config: timeout", lambda: SandboxConfiguration(max_execution_time=0), ConfigurationError,
     ["max_execution_time must be a positive number or None, got 0"]),
    ("config: port", lambda: SandboxConfiguration(debug_port=70000), ConfigurationError,
     ["debug_port must be a TCP port or None, got 70000"]),
    ("register: empty name", lambda: HostFunctions().register("", _add), HostFunctionError,
     ["invalid function name ''", "non-empty str"]),
    ("register: not callable", lambda: HostFunctions().register("F", 3), HostFunctionError,
     ["host function 'F': 3 is not callable"]),
    ("register: no annotation", lambda: HostFunctions().register("F", _unannotated),
     HostFunctionError, ["host function 'F': parameter 'a' has no type annotation", "I32"]),
    ("register: unsupported annotation", lambda: HostFunctions().register("F", _list_param),
     HostFunctionError, ["host function 'F': parameter 'a': unsupported annotation", "I32/U32"]),
    ("register: signature of a wrong type",
     lambda: HostFunctions().register("F", _add, signature="i32"), HostFunctionError,  # type: ignore[arg-type]
     ["signature must be a Signature, got str"]),
    ("code: language", lambda: CodeSandbox("rust"), ConfigurationError,
     ["unknown language 'rust'", "choose one of js, lua"]),
    ("code: tools", lambda: CodeSandbox("js", tools=[print]), ArgumentError,  # type: ignore[arg-type]
     ["tools must be a mapping of names to callables, got list"]),
    ("code: tool name", lambda: CodeSandbox("js", tools={"a b": print}), ArgumentError,
     ["tool name 'a b' is not an identifier"]),
    ("code: timeout", lambda: CodeSandbox("js", timeout=-1), ConfigurationError,
     ["timeout must be a positive number of seconds or None, got -1"]),
    ("code: memory limit", lambda: CodeSandbox("js", memory_limit="x"), ConfigurationError,  # type: ignore[arg-type]
     ["memory_limit must be a positive int, got 'x'"]),
]

_snap: list[Snapshot] = []


def _snapshot() -> Snapshot:
    if not _snap:
        funcs = HostFunctions().register("HostAdd", _add)
        with UninitializedSandbox(ELF, host_functions=funcs).evolve() as sb:
            _snap.append(sb.snapshot())
    return _snap[0]


@pytest.fixture(autouse=True)
def _in_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("what,make,error,patterns", CORPUS, ids=[c[0] for c in CORPUS])
def test_wrong_input(what: str, make: Callable[[], Any], error: type[SnapcellError],
                     patterns: list[str], kvm_ok: None) -> None:
    with pytest.raises(error) as info:
        make()
    assert isinstance(info.value, SnapcellError)
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    assert "Traceback" not in msg and "0x7f" not in msg and len(msg) < 1000


def test_call_errors_name_the_argument_and_list_functions(sandbox: MultiUseSandbox) -> None:
    with pytest.raises(ArgumentError, match=r"argument 0 \(i32\): expected i32 \(int\), got str"):
        sandbox.call("EchoI32", "abc")
    with pytest.raises(ArgumentError, match="takes 2 arguments, got 1"):
        sandbox.call("Add", 1)
    with pytest.raises(UnknownFunctionError, match="did you mean 'Echo'.*It exports: Add, "):
        sandbox.call("Ech", "x")
    assert sandbox.call("Echo", "x") == "x"            # nothing changed


def test_debug_port_in_use(kvm_ok: None) -> None:
    funcs = HostFunctions().register("HostAdd", _add)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(DebugPortInUse, match=f"127.0.0.1:{port} is already in use.*0 for any free"):
            MultiUseSandbox.from_snapshot(_snapshot(), host_functions=funcs,
                                          config=SandboxConfiguration(debug_port=port))
    with MultiUseSandbox.from_snapshot(_snapshot(), host_functions=funcs,
                                       config=SandboxConfiguration(debug_port=0)) as sb:
        assert isinstance(sb.debug_port, int) and sb.debug_port > 0


def test_snapshot_repr_is_short(kvm_ok: None) -> None:
    text = repr(_snapshot())
    assert text.startswith("Snapshot(generation 1, initialised, ") and len(text) < 200
    assert str(_snapshot()) == text


# ------------------------------------------------------------------ keyword-only, deprecation path
def test_positional_optional_arguments_warn_and_still_work(kvm_ok: None) -> None:
    funcs = HostFunctions().register("HostAdd", _add)
    config = SandboxConfiguration(heap_size=16 << 20)
    with pytest.warns(DeprecationWarning, match=r"pass config=\.\.\., host_functions=\.\.\. by keyword"):
        sb = UninitializedSandbox(ELF, config, funcs).evolve()     # type: ignore[misc]
    with sb:
        assert sb.call("Add", 1, 2) == 3 and sb.config.heap_size == 16 << 20
        snap = sb.snapshot()
    with pytest.warns(DeprecationWarning, match=r"from_snapshot\(snapshot, \.\.\.\): pass host_functions="):
        with MultiUseSandbox.from_snapshot(snap, funcs) as sb2:
            assert sb2.call("Add", 2, 2) == 4
    with pytest.warns(DeprecationWarning, match="SandboxConfiguration"):
        assert SandboxConfiguration(8192, 8192).input_size == 8192  # type: ignore[misc]
    with pytest.warns(DeprecationWarning, match="register"):
        HostFunctions().register("F", _add, funcs.get("HostAdd").signature)  # type: ignore[union-attr,misc]


def test_keywords_do_not_warn_and_both_ways_is_an_error(kvm_ok: None) -> None:
    funcs = HostFunctions().register("HostAdd", _add)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UninitializedSandbox(ELF, config=SandboxConfiguration(), host_functions=funcs).close()
    with pytest.raises(ArgumentError, match="config given both by position and as config="):
        UninitializedSandbox(ELF, SandboxConfiguration(), config=SandboxConfiguration())  # type: ignore[misc]
