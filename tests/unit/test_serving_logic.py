"""Pure logic of the serving layer: JSON values, API keys, error statuses, the body limit, the
catalogue's reference rules and batch framing (no KVM)."""

from __future__ import annotations

import asyncio
import hashlib
import math
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell import errors as E
from snapcell.guest.functions import Signature
from snapcell.guest.values import ValueType as T
from snapcell.sandbox import batch
from snapcell.serving.auth import ApiKeys, key_from_headers
from snapcell.serving.catalog import Catalog
from snapcell.serving.errors import ApiError, BodyTooLarge, error_body, status_of
from snapcell.serving.jsonvalues import arg_from_json, args_from_json, result_to_json
from snapcell.serving.limits import BodyLimit
from snapcell.serving.metrics import PoolMetrics


# ------------------------------------------------------------------------------ JSON values
@given(st.binary(max_size=200))
def test_bytes_round_trip_as_base64(b: bytes) -> None:
    assert arg_from_json(T.BYTES, result_to_json(T.BYTES, b), "x") == b


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_round_trip(f: float) -> None:
    back = arg_from_json(T.F64, result_to_json(T.F64, f), "x")
    assert (math.isnan(f) and math.isnan(back)) or back == f


def test_json_arguments_are_typed_strictly() -> None:
    with pytest.raises(E.ArgumentError, match="JSON integer"):
        arg_from_json(T.I32, True, "args[0]")
    with pytest.raises(E.ArgumentError, match="JSON integer"):
        arg_from_json(T.I64, 1.0, "args[0]")
    assert arg_from_json(T.F32, 3, "a") == 3.0 and isinstance(arg_from_json(T.F32, 3, "a"), float)
    with pytest.raises(E.ArgumentError, match="base64"):
        arg_from_json(T.BYTES, "***", "a")
    with pytest.raises(E.ArgumentError, match="expected bool"):
        arg_from_json(T.BOOL, 1, "a")
    with pytest.raises(E.ArgumentError, match="expected null"):
        arg_from_json(T.VOID, 0, "a")
    sig = Signature((T.I32, T.STR), T.I32)
    assert args_from_json("F", sig, [1, "a"]) == (1, "a")
    with pytest.raises(E.ArgumentError, match="takes 2"):
        args_from_json("F", sig, [1])
    with pytest.raises(E.ArgumentError, match="array"):
        args_from_json("F", sig, {"a": 1})
    with pytest.raises(E.ArgumentError, match=r"args\[1\]"):
        args_from_json("F", sig, [1, 2])


# ------------------------------------------------------------------------------ API keys
def test_api_key_file() -> None:
    secret = "s3cret-key-of-bob-0001"
    keys = ApiKeys.parse(f"""
# comment
alice  alice-key-0123456789   # trailing comment
bob    sha256:{hashlib.sha256(secret.encode()).hexdigest()}
alice  second-alice-key-0123
""")
    assert len(keys) == 3
    assert keys.tenant("alice-key-0123456789") == "alice"
    assert keys.tenant("second-alice-key-0123") == "alice"
    assert keys.tenant(secret) == "bob"
    assert keys.tenant("sha256:" + hashlib.sha256(secret.encode()).hexdigest()) is None
    assert keys.tenant("nope") is None and keys.tenant(None) is None and keys.tenant("") is None


@pytest.mark.parametrize("text, message", [
    ("", "no keys"),
    ("alice", "expected 'tenant key'"),
    ("alice short", "at least 16"),
    ("bad/name key-0123456789abcdef", "bad tenant"),
    ("a key-0123456789abcdef\nb key-0123456789abcdef", "duplicate"),
    ("a b c", "expected"),
])
def test_bad_api_key_files(text: str, message: str) -> None:
    with pytest.raises(E.ConfigurationError, match=message):
        ApiKeys.parse(text)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(E.ConfigurationError, match="cannot read"):
        ApiKeys.from_file(tmp_path / "absent")


def test_keys_from_headers() -> None:
    assert key_from_headers("Bearer abc", None) == "abc"
    assert key_from_headers("bearer  abc ", None) == "abc"
    assert key_from_headers("Basic abc", None) is None
    assert key_from_headers("Bearer ", None) is None
    assert key_from_headers("Bearer a", "b") == "b"
    assert key_from_headers(None, None) is None


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("exc, status, kind", [
    (E.UnknownFunctionError("x"), 404, "unknown_function"),
    (E.ArgumentError("x"), 400, "invalid_arguments"),
    (E.GuestError(3, "m"), 422, "guest_error"),
    (E.ExecutionTimeout("x"), 504, "timeout"),
    (E.ExecutionCancelled("x"), 503, "cancelled"),
    (E.GuestAbort(1, "m"), 422, "guest_fault"),
    (E.PoolFull("x"), 429, "overloaded"),
    (E.PoolClosed("x"), 503, "shutting_down"),
    (E.SessionNotFound("x"), 404, "unknown_session"),
    (E.CodeSandboxUnavailable("x"), 501, "not_implemented"),
    (E.SnapshotNotFound("x"), 404, "unknown_snapshot"),
    (E.SnapshotRegistryError("x"), 502, "registry_error"),
    (E.SnapshotDigestMismatch("x"), 502, "bad_snapshot"),
    (E.SnapshotHostFunctionMismatch(["H"], {}), 409, "snapshot_unusable"),
    (E.MachineError("x"), 422, "guest_fault"),
    (E.KvmUnavailableError("x"), 500, "internal_error"),
    (ApiError(413, "body_too_large", "x"), 413, "body_too_large"),
    (RuntimeError("x"), 500, "internal_error"),
])
def test_error_statuses(exc: Exception, status: int, kind: str) -> None:
    assert status_of(exc) == (status, kind)
    got, body = error_body(exc)
    assert got == status and body["error"]["type"] == kind and body["error"]["status"] == status


def test_guest_error_body_has_its_code() -> None:
    assert error_body(E.GuestError(7, "boom"))[1]["error"]["code"] == 7


# ------------------------------------------------------------------------------ body limit
async def _drive(limit: int, headers: list[tuple[bytes, bytes]],
                 chunks: list[bytes]) -> tuple[list[Any], Any]:
    sent: list[Any] = []
    seen: list[Any] = []
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
             for i, c in enumerate(chunks)]

    async def receive() -> Any:
        return queue.pop(0)

    async def send(m: Any) -> None:
        sent.append(m)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            while True:
                m = await receive()
                if not m.get("more_body"):
                    break
            seen.append("read")
        except BodyTooLarge as e:
            seen.append(e)
    await BodyLimit(app, limit)({"type": "http", "headers": headers}, receive, send)
    return sent, seen


def test_body_limit_by_content_length() -> None:
    sent, seen = asyncio.run(_drive(10, [(b"content-length", b"11")], [b"x" * 11]))
    assert sent[0]["status"] == 413 and seen == []
    sent, seen = asyncio.run(_drive(10, [(b"content-length", b"zz")], [b""]))
    assert sent[0]["status"] == 400
    sent, seen = asyncio.run(_drive(10, [(b"content-length", b"10")], [b"x" * 10]))
    assert sent == [] and seen == ["read"]


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(1, 120))
def test_body_limit_counts_streamed_bodies(sizes: list[int], limit: int) -> None:
    sent, seen = asyncio.run(_drive(limit, [], [b"x" * n for n in sizes]))
    if sum(sizes) > limit:
        assert isinstance(seen[0], BodyTooLarge)
    else:
        assert seen == ["read"]


# ------------------------------------------------------------------------------ catalogue
def test_catalogue_refuses_what_it_does_not_serve(tmp_path: Path) -> None:
    cat = Catalog(cache_dir=tmp_path, metrics=PoolMetrics(),
                  allow_registries=["127.0.0.1:5000/team"])
    assert cat.allowed("127.0.0.1:5000/team/fn:v1")
    assert not cat.allowed("127.0.0.1:5000/teamx/fn:v1")      # prefixes end at a '/'
    assert not cat.allowed("127.0.0.1:5001/team/fn:v1")
    for ref in ("unknown", "/etc/passwd", "../layout", "127.0.0.1:5001/team/fn:v1"):
        with pytest.raises(E.SnapshotNotFound):
            asyncio.run(cat.resolve(ref))
    with pytest.raises(E.SnapshotReferenceError):
        asyncio.run(cat.resolve("127.0.0.1:5000/team/UPPER:v1"))
    with pytest.raises(E.SnapshotReferenceError):
        cat.add_registry("bad name", "127.0.0.1:5000/team/fn:v1")
    cat.add_registry("fn", "127.0.0.1:5000/team/fn:v1")
    with pytest.raises(E.SnapshotReferenceError, match="twice"):
        cat.add_registry("fn", "127.0.0.1:5000/team/fn:v2")
    assert cat.listing() == [{"ref": "fn", "source": "registry 127.0.0.1:5000/team/fn:v1",
                              "digest": None, "pulled": False}]


# ------------------------------------------------------------------------------ batch framing
@given(st.lists(st.binary(min_size=1, max_size=100), max_size=60), st.integers(400, 3000))
def test_batch_frames_keep_items_in_order_and_fit(items: list[bytes], capacity: int) -> None:
    packed = [msgpack.packb(list(i)) for i in items]
    msgs = batch.frames("Fn", packed, capacity, "Fn()")
    assert all(len(m) <= capacity for m, _ in msgs)
    got: list[Any] = []
    for m, n in msgs:
        obj = msgpack.unpackb(m[4:])
        assert obj[0] == batch.BATCH_CALL and obj[1] == "Fn" and len(obj[2]) == n
        got.extend(obj[2])
    assert got == [list(i) for i in items]





# ------------------------------------------------------------------------------ listening socket
def test_served_connections_get_tcp_nodelay() -> None:
    """The socket snapcell serve binds must make asyncio set TCP_NODELAY on accepted connections
    (otherwise keep-alive responses stall ~40 ms on delayed ACKs)."""
    import socket

    from snapcell.serving.server import bind, is_loopback

    async def main() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            s = writer.get_extra_info("socket")
            got.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
        sock = bind("127.0.0.1", 0)
        server = await asyncio.start_server(on_connect, sock=sock)
        _, w = await asyncio.open_connection(*sock.getsockname())
        value = await asyncio.wait_for(got, 10)
        w.close()
        server.close()
        return value
    assert asyncio.run(main()) != 0
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example")


# ------------------------------------------------------------------------------ code seam
class _RecordingBackend:
    """Checks the plug-in contract of snapcell.serving.code (it runs nothing: code sandboxes
    are a separate package); records what the seam passes and what it closes or kills."""

    languages = ("js", "python")

    def __init__(self, block: bool = False) -> None:
        self.opened: list[tuple[str, Any, Any]] = []
        self.events: list[str] = []
        self.block = block
        import threading
        self.release = threading.Event()

    def open(self, lang: str, *, files: Any, timeout: Any) -> Any:
        self.opened.append((lang, files, timeout))
        backend = self

        class Box:
            def run(self, code: str) -> Any:
                backend.events.append(f"run {code}")
                if backend.block:
                    backend.release.wait(10)

                class R:
                    value, stdout, stderr, error = 2, "out", "", None
                return R()

            def close(self) -> None:
                backend.events.append("close")

            def kill(self) -> None:
                backend.events.append("kill")
                backend.release.set()
        return Box()


def test_code_seam_contract() -> None:
    from snapcell.serving.code import CodePool, CodeResult
    backend = _RecordingBackend()
    pool = CodePool(backend)
    r = asyncio.run(pool.run("1+1", lang="js", files={"a.txt": "x"}, timeout=2.0))
    assert r == CodeResult(2, "out", "", None)
    assert backend.opened == [("js", {"a.txt": "x"}, 2.0)]
    assert backend.events == ["run 1+1", "close"]
    assert asyncio.run(pool.run("x")).value == 2 and backend.opened[-1][0] == "js"
    with pytest.raises(E.ArgumentError, match="unknown language"):
        asyncio.run(pool.run("x", lang="cobol"))
    from snapcell.serving.code import current_backend, register_backend
    default = current_backend()
    register_backend(None)
    try:
        with pytest.raises(E.CodeSandboxUnavailable):
            asyncio.run(CodePool().run("x", lang="js"))
    finally:
        register_backend(default)


def test_code_seam_cancellation_kills_the_box() -> None:
    from snapcell.serving.code import CodePool
    backend = _RecordingBackend(block=True)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(CodePool(backend).run("loop", lang="js"), 0.2)
    asyncio.run(main())
    assert "kill" in backend.events


class _InlineBackend(_RecordingBackend):
    """A backend that can run inline: records which runs took the event loop's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []

    def open(self, lang: str, *, files: Any, timeout: Any, network: Any = None) -> Any:
        return super().open(lang, files=files, timeout=timeout)

    def inline_ready(self, lang: str) -> bool:
        return True

    def run_inline(self, lang: str, code: str, files: Any, budget: float) -> Any:
        from snapcell.serving.code import CodeResult
        self.inline.append(code)
        return CodeResult(1, "", "", None)


def test_only_runs_without_blocking_host_calls_go_inline() -> None:
    """The inline rule is a property of the run (RunEffects), not a case of the network: a run
    that may stream its output, reach the network or call tools is never run on the loop."""
    from snapcell.serving.code import CodePool, RunEffects
    assert RunEffects().blocking_host_calls == ()
    assert RunEffects(on_output=print, network=object(), tools=("search",)).blocking_host_calls \
        == ("output", "network", "tools")
    backend = _InlineBackend()
    pool = CodePool(backend)

    async def main() -> None:
        await pool.run("plain", lang="js")
        await pool.run("streamed", lang="js", on_output=lambda stream, text: None)
        await pool.run("networked", lang="js", network=object())
    asyncio.run(main())
    assert backend.inline == ["plain"]
    assert [code for code in backend.events if code.startswith("run")] == [
        "run streamed", "run networked"]


# ------------------------------------------------------------------------------ CLI parsing
def test_serve_snapshot_specs_and_host_functions() -> None:
    import click

    from snapcell.cli.serve import _snapshot_specs, load_host_functions
    from snapcell.sandbox import HostFunctions
    layouts, registry = _snapshot_specs(("a=dir/x#v1", "b=dir/y", "c=oci://127.0.0.1:5000/r/c:v2"))
    assert layouts == [("a", "dir/x", "v1"), ("b", "dir/y", "latest")]
    assert registry == [("c", "127.0.0.1:5000/r/c:v2")]
    for bad in ("noequals", "=dir", "name="):
        with pytest.raises(click.BadParameter):
            _snapshot_specs((bad,))
    assert isinstance(load_host_functions("snapcell.bench.serving:host_functions"), HostFunctions)
    for bad in ("nomodule", "snapcell.nonexistent:x", "snapcell.bench.serving:missing",
                "snapcell.bench.serving:stats"):
        with pytest.raises(click.BadParameter):
            load_host_functions(bad)
