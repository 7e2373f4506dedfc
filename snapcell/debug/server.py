"""The GDB remote serial protocol server: one `DebugSession` per debugged sandbox.

Threads:
  * The *application thread* runs the guest. When the guest stops it calls `notify_stop(event)` and
    then blocks in `wait_for_resume()` until gdb decides what happens next.
  * The *server thread* (started by `start()`) owns the listening socket and the gdb connection and
    does all socket I/O. It answers gdb's packets by calling the `DebugTarget` while the guest is
    stopped, calls `target.resume()` on `c`/`s`/`vCont`, and wakes the application thread through a
    condition variable. The only target method it calls while the guest runs is `interrupt()` (Ctrl-C).

The server listens on 127.0.0.1 only and serves one connection at a time (further connections are
accepted and closed at once). A stop that happens while gdb is not connected waits for a connection:
`wait_for_resume` blocks until a gdb connects and resumes. gdb's `disconnect` (closing the connection
without `D`) leaves the guest stopped, so gdb can reconnect; `detach` ends debugging for the session."""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from snapcell.errors import DebugPortInUse, SandboxStateError, SnapcellError

from . import x86_64
from .packets import (
    MAX_PACKET_SIZE,
    PacketError,
    PacketReader,
    StreamEventKind,
    escape_binary,
    frame_packet,
    hex_decode,
    hex_encode,
    parse_hex_int,
    unescape_binary,
)
from .target import DebugTarget, ResumeAction, StopEvent, StopReason

__all__ = ["DebugSession", "MAX_MEMORY_READ", "stop_reply"]

log = logging.getLogger("snapcell.debug")

MAX_MEMORY_READ = (MAX_PACKET_SIZE - 16) // 2
"""The largest `m` read served; larger requests get `E01` (gdb never asks for more than fits in
`PacketSize`)."""

_HOST = "127.0.0.1"   # never anything else: the debugger has full control of the guest
_PAGE = 4096
_THREAD_ID = "01"
_SUPPORTED = (f"PacketSize={MAX_PACKET_SIZE:x};qXfer:features:read+;swbreak+;"
              "QStartNoAckMode+;vContSupported+").encode()

# Error replies.
_E_MALFORMED = b"E01"      # malformed packet or arguments
_E_REGISTER = b"E02"       # unknown or unavailable register
_E_MEMORY = b"E03"         # memory not accessible
_E_BREAKPOINT = b"E04"     # breakpoint could not be inserted or removed
_E_RUNNING = b"E05"        # the guest is running: no target access
_E_TARGET = b"E06"         # another target failure (resume, detach, ...)

_ADDR_LIMIT = 1 << 64


def stop_reply(event: StopEvent) -> bytes:
    """The stop-reply packet payload gdb gets for `event`: `T05swbreak:;thread:01;` for a
    breakpoint, `TSSthread:01;` for other stops (SS = the signal in hex), `WXX` for an exit."""
    if event.reason is StopReason.EXITED:
        return b"W%02x" % ((event.exit_code or 0) & 0xFF)
    sig = event.signal & 0xFF
    swbreak = "swbreak:;" if event.reason is StopReason.BREAKPOINT else ""
    return f"T{sig:02x}{swbreak}thread:{_THREAD_ID};".encode()


class _Disconnect(Exception):
    """Raised inside the server thread to drop the gdb connection."""


class DebugSession:
    """A GDB RSP server for one debug target, listening on 127.0.0.1:`port` (0 = ephemeral; the
    bound port is `.port` after `start()`).

    Application-thread API: `notify_stop`, `wait_for_resume`. Anyone: `start`, `close`, `connected`,
    `wait_for_connection`. Usable as a context manager (`start` on enter, `close` on exit)."""

    def __init__(self, target: DebugTarget, port: int = 0) -> None:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"bad TCP port {port}")
        self._target = target
        self._requested_port = port
        self._port: int | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None

        # Shared state, guarded by _cond.
        self._cond = threading.Condition()
        self._stop_event: StopEvent | None = None   # the unresolved stop the app thread is in
        self._action: ResumeAction | None = None    # how the server resolved it
        self._last_event: StopEvent | None = None   # for '?'
        self._generation = 0                        # counts notify_stop calls
        self._client_present = False
        self._detached = False                      # gdb detached: debugging is over
        self._target_detached = False               # target.detach() was called
        self._kill_pending = False                  # gdb sent 'k' while the guest ran
        self._closed = False
        self._server_done = False

        # Server-thread state.
        self._client: socket.socket | None = None
        self._reader = PacketReader()
        self._no_ack = False
        self._last_sent: bytes | None = None
        self._awaiting_stop = False                 # gdb waits for a stop reply ...
        self._awaited_after = 0                     # ... to a stop newer than this generation

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The TCP port the server listens on (valid after `start()`)."""
        if self._port is None:
            raise SandboxStateError("the debug session is not started")
        return self._port

    @property
    def connected(self) -> bool:
        """Whether a gdb is connected right now."""
        with self._cond:
            return self._client_present

    def start(self) -> None:
        """Bind 127.0.0.1:port, listen, and start the server thread."""
        if self._thread is not None or self._closed:
            raise SandboxStateError("the debug session was already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((_HOST, self._requested_port))
            listener.listen(1)
            listener.setblocking(False)
        except OSError as e:
            listener.close()
            if e.errno == errno.EADDRINUSE:
                raise DebugPortInUse(
                    f"debug_port {self._requested_port}: {_HOST}:{self._requested_port} is already "
                    "in use; choose another port, or 0 for any free one (snapcell debug --port 0; "
                    "the sandbox's debug_port property tells which)") from None
            raise
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._serve, name=f"snapcell-gdb-{self._port}", daemon=True)
        self._thread.start()
        log.info("gdb server listening on %s:%d", _HOST, self._port)

    def wait_for_connection(self, timeout: float | None = None) -> bool:
        """Block until a gdb is connected (True) or `timeout` seconds passed / the session ended
        (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._client_present:
                if self._closed or self._server_done:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        """Stop the server: drop the connection, stop listening, join the server thread. An
        application thread blocked in `wait_for_resume` (now or later) gets `ResumeAction.DETACHED`,
        after `target.detach()` was called on it. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._wake()
        if self._thread is None:
            with self._cond:
                self._server_done = True
                self._cond.notify_all()
        elif self._thread is not threading.current_thread():
            self._thread.join()   # the thread sets _server_done as it ends

    def __enter__(self) -> DebugSession:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ application thread

    def notify_stop(self, event: StopEvent) -> None:
        """Report a stop of the guest (called by the application thread, with the vCPU stopped).
        For every reason except `EXITED`, the application thread must then call `wait_for_resume`
        before running the guest again. `EXITED` does not block: it is forwarded to gdb (`Wxx`) if
        gdb is waiting, and the guest counts as running afterwards."""
        with self._cond:
            self._generation += 1
            self._last_event = event
            if event.reason is StopReason.EXITED:
                self._stop_event = None
                self._action = None
            else:
                self._stop_event = event
                self._action = None
            self._cond.notify_all()
        self._wake()

    def wait_for_resume(self, timeout: float | None = None) -> ResumeAction:
        """Block the application thread until gdb resumes the guest (after `notify_stop`).

        Returns CONTINUE or STEP after `target.resume` was called, DETACHED after `target.detach`
        (gdb detached or the session was closed; call it on a detached session and it returns at
        once), or KILLED after `target.kill`. With a `timeout`, raises `TimeoutError` when it
        expires; the guest is then still stopped and `wait_for_resume` must be called again before
        the guest runs. Raises `SandboxStateError` if no stop is pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._stop_event is None and not (self._detached or self._closed):
                raise SandboxStateError("wait_for_resume without a pending stop (call notify_stop first)")
            while True:
                if self._action is not None:
                    action = self._action
                    self._action = None
                    self._stop_event = None
                    return action
                if (self._detached or self._closed) and self._server_done:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("gdb did not resume the guest in time")
                self._cond.wait(remaining)
            # The session is over (detach while the guest ran, or close): detach the target here,
            # on the application thread, where the guest is known to be stopped.
            need_detach = not self._target_detached
            self._target_detached = True
            self._stop_event = None
        if need_detach:
            try:
                self._target.detach()
            except Exception:
                log.exception("target.detach() failed")
        return ResumeAction.DETACHED

    # ------------------------------------------------------------------ server thread

    def _wake(self) -> None:
        with self._cond, contextlib.suppress(OSError):
            if self._wake_w is not None and not self._server_done:
                self._wake_w.send(b"\0")

    def _is_stopped(self) -> bool:
        with self._cond:
            return self._stop_event is not None and self._action is None

    def _serve(self) -> None:
        assert self._listener is not None and self._wake_r is not None and self._wake_w is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                with self._cond:
                    if self._closed or self._detached:
                        break
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                    elif self._client is not None:
                        self._on_readable(sel)
                self._check_stop(sel)
        except Exception:
            log.exception("gdb server thread failed")
        finally:
            self._drop_client(sel)
            sel.close()
            self._listener.close()
            self._wake_r.close()
            with self._cond:
                self._wake_w.close()   # under the lock: _wake() checks for a closed socket
                self._server_done = True
                self._cond.notify_all()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._listener is not None
        try:
            conn, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._client is not None:
            log.warning("refusing a second gdb connection from %s", addr)
            conn.close()
            return
        conn.setblocking(True)
        conn.settimeout(10.0)   # bounds sendall(); reads only happen when select says readable
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        self._reader.reset()
        self._no_ack = False
        self._last_sent = None
        self._awaiting_stop = False
        sel.register(conn, selectors.EVENT_READ, "client")
        with self._cond:
            self._client_present = True
            self._cond.notify_all()
        log.info("gdb connected from %s", addr)

    def _drop_client(self, sel: selectors.BaseSelector) -> None:
        if self._client is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(self._client)
        self._client.close()
        self._client = None
        self._awaiting_stop = False
        with self._cond:
            self._client_present = False
            self._cond.notify_all()
        log.info("gdb disconnected")

    def _on_readable(self, sel: selectors.BaseSelector) -> None:
        assert self._client is not None
        try:
            data = self._client.recv(65536)
            if not data:
                raise _Disconnect
            for ev in self._reader.feed(data):
                if ev.kind is StreamEventKind.ACK:
                    self._last_sent = None
                elif ev.kind is StreamEventKind.NAK:
                    if self._last_sent is not None:
                        self._client.sendall(self._last_sent)
                elif ev.kind is StreamEventKind.INTERRUPT:
                    self._on_interrupt()
                elif ev.kind is StreamEventKind.BAD_PACKET:
                    log.debug("bad checksum on %r", ev.payload[:60])
                    if not self._no_ack:
                        self._client.sendall(b"-")
                else:
                    if not self._no_ack:
                        self._client.sendall(b"+")
                    if ev.kind is StreamEventKind.OVERSIZED:
                        self._send(_E_MALFORMED)
                    else:
                        self._on_packet(ev.payload)
        except (_Disconnect, OSError):
            self._drop_client(sel)

    def _send(self, payload: bytes) -> None:
        assert self._client is not None
        log.debug("-> %r", payload[:200])
        packet = frame_packet(payload)
        if not self._no_ack:
            self._last_sent = packet
        self._client.sendall(packet)

    def _on_interrupt(self) -> None:
        if self._is_stopped():
            return   # already stopped; the stop reply is on its way
        log.debug("<- Ctrl-C")
        self._call_interrupt()

    def _call_interrupt(self) -> None:
        try:
            self._target.interrupt()
        except Exception:
            log.exception("target.interrupt() failed")

    def _check_stop(self, sel: selectors.BaseSelector) -> None:
        """Deliver a new stop to gdb if it waits for one; handle a kill requested while running."""
        with self._cond:
            gen = self._generation
            event = self._last_event
            fresh_stop = self._stop_event is not None and self._action is None
            kill = self._kill_pending and fresh_stop
            if kill:
                self._kill_pending = False
        if kill:
            self._do_kill()
            return
        if self._client is None or not self._awaiting_stop or gen <= self._awaited_after or event is None:
            return
        self._awaiting_stop = False
        try:
            self._send(stop_reply(event))
        except OSError:
            self._drop_client(sel)

    def _do_kill(self) -> None:
        try:
            self._target.kill()
        except Exception:
            log.exception("target.kill() failed")
        with self._cond:
            self._action = ResumeAction.KILLED
            self._cond.notify_all()

    # ------------------------------------------------------------------ packets

    def _on_packet(self, payload: bytes) -> None:
        log.debug("<- %r", payload[:200])
        try:
            reply = self._dispatch(payload)
        except _Disconnect:
            raise
        except PacketError as e:
            log.debug("malformed packet %r: %s", payload[:60], e)
            reply = _E_MALFORMED
        except Exception:
            log.exception("error handling packet %r", payload[:60])
            reply = _E_TARGET
        if reply is not None:
            self._send(reply)

    def _dispatch(self, p: bytes) -> bytes | None:
        if not p:
            return b""
        head = p[:1]
        handler = self._SIMPLE.get(head)
        if handler is not None:
            return handler(self, p[1:])
        if head == b"q":
            return self._query(p)
        if head == b"Q":
            if p == b"QStartNoAckMode":
                self._send(b"OK")
                self._no_ack = True
                self._last_sent = None
                return None
            return b""
        if head == b"v":
            return self._v_packet(p)
        return b""

    # -- queries

    def _query(self, p: bytes) -> bytes:
        if p.startswith(b"qSupported"):
            return _SUPPORTED
        if p.startswith(b"qXfer:features:read:"):
            return self._xfer_features(p[len(b"qXfer:features:read:"):])
        if p == b"qAttached" or p.startswith(b"qAttached:"):
            return b"1"
        if p == b"qC":
            return b"QC" + _THREAD_ID.encode()
        if p == b"qfThreadInfo":
            return b"m" + _THREAD_ID.encode()
        if p == b"qsThreadInfo":
            return b"l"
        if p.startswith(b"qSymbol"):
            return b"OK"
        return b""

    def _xfer_features(self, args: bytes) -> bytes:
        annex, sep, rng = args.partition(b":")
        if not sep:
            raise PacketError("qXfer without a range")
        if annex != b"target.xml":
            return b"E00"
        off_s, comma, len_s = rng.partition(b",")
        if not comma:
            raise PacketError("qXfer range without a length")
        offset, length = parse_hex_int(off_s), parse_hex_int(len_s)
        doc = x86_64.TARGET_XML.encode()
        chunk = doc[offset:offset + min(length, MAX_PACKET_SIZE // 2)]
        more = offset + len(chunk) < len(doc)
        return (b"m" if more else b"l") + escape_binary(chunk)

    # -- stop status and execution

    def _status(self, _args: bytes) -> bytes | None:
        with self._cond:
            stopped = self._stop_event is not None and self._action is None
            event = self._stop_event if stopped else None
            gen = self._generation
        if event is not None:
            return stop_reply(event)
        # The guest is running (gdb connected in the middle of a run): stop it and answer '?' with
        # the stop that follows.
        self._awaiting_stop = True
        self._awaited_after = gen
        self._call_interrupt()
        return None

    def _resume(self, step: bool) -> bytes | None:
        if not self._is_stopped():
            return _E_RUNNING
        try:
            self._target.resume(step)
        except SnapcellError as e:
            log.warning("target.resume failed: %s", e)
            return _E_TARGET
        with self._cond:
            self._awaited_after = self._generation
            self._action = ResumeAction.STEP if step else ResumeAction.CONTINUE
            self._cond.notify_all()
        self._awaiting_stop = True
        return None

    def _continue(self, args: bytes) -> bytes | None:
        if args:   # 'c addr': resuming elsewhere is not supported
            return _E_MALFORMED
        return self._resume(False)

    def _step(self, args: bytes) -> bytes | None:
        if args:
            return _E_MALFORMED
        return self._resume(True)

    def _continue_signal(self, args: bytes) -> bytes | None:
        # 'C sig[;addr]' / 'S sig[;addr]': guest signals do not exist; resume without one.
        sig, _, addr = args.partition(b";")
        parse_hex_int(sig)
        if addr:
            return _E_MALFORMED
        return self._resume(False)

    def _step_signal(self, args: bytes) -> bytes | None:
        sig, _, addr = args.partition(b";")
        parse_hex_int(sig)
        if addr:
            return _E_MALFORMED
        return self._resume(True)

    def _v_packet(self, p: bytes) -> bytes | None:
        if p == b"vCont?":
            return b"vCont;c;C;s;S"
        if p.startswith(b"vCont;"):
            for action in p[len(b"vCont;"):].split(b";"):
                verb, _, thread = action.partition(b":")
                if thread not in (b"", b"-1", b"p-1.-1") and not self._is_our_thread(thread):
                    continue
                if verb in (b"c", b"s") or (verb[:1] in (b"C", b"S") and len(verb) > 1):
                    if len(verb) > 1:
                        parse_hex_int(verb[1:])
                    return self._resume(verb[:1] in (b"s", b"S"))
                return _E_MALFORMED
            return _E_MALFORMED
        return b""

    @staticmethod
    def _is_our_thread(thread: bytes) -> bool:
        tid = thread.rpartition(b".")[2] if thread.startswith(b"p") else thread
        try:
            return parse_hex_int(tid) in (0, 1)
        except PacketError:
            return tid == b"-1"

    def _detach(self, _args: bytes) -> bytes | None:
        with self._cond:
            stopped = self._stop_event is not None and self._action is None
        if stopped:
            try:
                self._target.detach()
            except SnapcellError as e:
                log.warning("target.detach failed: %s", e)
                return _E_TARGET
        with self._cond:
            self._detached = True
            if stopped:
                self._target_detached = True
                self._action = ResumeAction.DETACHED
            self._cond.notify_all()
        # Otherwise the guest runs: the application thread detaches the target at its next stop.
        self._send(b"OK")
        raise _Disconnect

    def _kill(self, _args: bytes) -> bytes | None:
        if self._is_stopped():
            self._do_kill()
        else:
            with self._cond:
                self._kill_pending = True
            self._call_interrupt()
        raise _Disconnect   # gdb does not wait for a reply to 'k'

    # -- registers

    def _read_registers(self, _args: bytes) -> bytes:
        if not self._is_stopped():
            return _E_RUNNING
        try:
            regs = self._target.read_registers()
        except SnapcellError as e:
            log.debug("read_registers failed: %s", e)
            return _E_REGISTER
        return x86_64.encode_g_packet(regs).encode()

    def _write_registers(self, args: bytes) -> bytes:
        if not self._is_stopped():
            return _E_RUNNING
        values = x86_64.decode_g_packet(args.decode("ascii", "replace"))
        try:
            current = self._target.read_registers()
            # Only write what the target has and what actually changes: gdb sends the whole set,
            # including registers the target cannot change (segment selectors, ...).
            changed = {n: v for n, v in values.items()
                       if n in current and self._masked(n, current[n]) != v}
            if changed:
                self._target.write_registers(changed)
        except SnapcellError as e:
            log.debug("write_registers failed: %s", e)
            return _E_REGISTER
        return b"OK"

    @staticmethod
    def _masked(name: str, value: int) -> int:
        return value & ((1 << x86_64.REGISTERS[x86_64.REGISTER_INDEX[name]].bitsize) - 1)

    def _read_register(self, args: bytes) -> bytes:
        n = parse_hex_int(args)
        if n >= len(x86_64.REGISTERS):
            return _E_REGISTER
        if not self._is_stopped():
            return _E_RUNNING
        reg = x86_64.REGISTERS[n]
        try:
            regs = self._target.read_registers()
        except SnapcellError:
            return _E_REGISTER
        return x86_64.encode_register(reg, regs.get(reg.name)).encode()

    def _write_register(self, args: bytes) -> bytes:
        num, eq, value = args.partition(b"=")
        if not eq:
            raise PacketError("P without '='")
        n = parse_hex_int(num)
        if n >= len(x86_64.REGISTERS):
            return _E_REGISTER
        reg = x86_64.REGISTERS[n]
        if len(value) != 2 * reg.size:
            raise PacketError(f"P value for {reg.name} has the wrong size")
        if not self._is_stopped():
            return _E_RUNNING
        decoded = int.from_bytes(hex_decode(value), "little")
        try:
            if reg.name not in self._target.read_registers():
                # gdb writes orig_rax whenever it changes the PC (GNU/Linux ABI): accept and ignore.
                return b"OK" if reg.name == "orig_rax" else _E_REGISTER
            self._target.write_registers({reg.name: decoded})
        except SnapcellError as e:
            log.debug("write_registers failed: %s", e)
            return _E_REGISTER
        return b"OK"

    # -- memory

    @staticmethod
    def _addr_len(spec: bytes) -> tuple[int, int]:
        a, comma, n = spec.partition(b",")
        if not comma:
            raise PacketError("expected addr,length")
        addr, length = parse_hex_int(a), parse_hex_int(n)
        if addr >= _ADDR_LIMIT or addr + length > _ADDR_LIMIT:
            raise PacketError("address range past 2**64")
        return addr, length

    def _read_memory(self, args: bytes) -> bytes:
        addr, length = self._addr_len(args)
        if length > MAX_MEMORY_READ:
            return _E_MALFORMED
        if not self._is_stopped():
            return _E_RUNNING
        if length == 0:
            return b""
        try:
            return hex_encode(self._read_exact(addr, length)).encode()
        except SnapcellError:
            pass
        # Return the readable prefix, page by page (gdb accepts a short read).
        data = bytearray()
        pos = addr
        while pos < addr + length:
            n = min(_PAGE - pos % _PAGE, addr + length - pos)
            try:
                data += self._read_exact(pos, n)
            except SnapcellError:
                break
            pos += n
        if not data:
            return _E_MEMORY
        return hex_encode(bytes(data)).encode()

    def _read_exact(self, addr: int, length: int) -> bytes:
        data = self._target.read_memory(addr, length)
        if len(data) != length:
            raise SnapcellError("short read from target")
        return bytes(data)

    def _write_memory_hex(self, args: bytes) -> bytes:
        spec, colon, hexdata = args.partition(b":")
        if not colon:
            raise PacketError("M without ':'")
        addr, length = self._addr_len(spec)
        data = hex_decode(hexdata)
        return self._write_memory(addr, length, data)

    def _write_memory_binary(self, args: bytes) -> bytes:
        spec, colon, raw = args.partition(b":")
        if not colon:
            raise PacketError("X without ':'")
        addr, length = self._addr_len(spec)
        return self._write_memory(addr, length, unescape_binary(raw))

    def _write_memory(self, addr: int, length: int, data: bytes) -> bytes:
        if len(data) != length:
            raise PacketError("memory write length does not match its data")
        if not self._is_stopped():
            return _E_RUNNING
        if length == 0:
            return b"OK"   # gdb probes 'X' support with an empty write
        try:
            self._target.write_memory(addr, data)
        except SnapcellError as e:
            log.debug("write_memory(%#x, %d) failed: %s", addr, length, e)
            return _E_MEMORY
        return b"OK"

    # -- breakpoints

    def _breakpoint(self, args: bytes, insert: bool) -> bytes:
        kind, comma, rest = args.partition(b",")
        if not comma:
            raise PacketError("Z/z without arguments")
        if kind != b"0":
            return b""   # hardware breakpoints and watchpoints are not supported
        addr_s, _, _kind = rest.partition(b",")
        addr = parse_hex_int(addr_s.partition(b";")[0])
        if addr >= _ADDR_LIMIT:
            raise PacketError("breakpoint address past 2**64")
        if not self._is_stopped():
            return _E_RUNNING
        try:
            if insert:
                self._target.insert_breakpoint(addr)
            else:
                self._target.remove_breakpoint(addr)
        except SnapcellError as e:
            log.debug("breakpoint %s at %#x failed: %s", "insert" if insert else "remove", addr, e)
            return _E_BREAKPOINT
        return b"OK"

    def _insert_breakpoint(self, args: bytes) -> bytes:
        return self._breakpoint(args, True)

    def _remove_breakpoint(self, args: bytes) -> bytes:
        return self._breakpoint(args, False)

    # -- threads

    def _set_thread(self, _args: bytes) -> bytes:
        return b"OK"

    def _thread_alive(self, args: bytes) -> bytes:
        return b"OK" if self._is_our_thread(args) else b"E01"

    _SIMPLE: dict[bytes, Callable[[DebugSession, bytes], bytes | None]] = {
        b"?": _status,
        b"g": _read_registers,
        b"G": _write_registers,
        b"p": _read_register,
        b"P": _write_register,
        b"m": _read_memory,
        b"M": _write_memory_hex,
        b"X": _write_memory_binary,
        b"c": _continue,
        b"s": _step,
        b"C": _continue_signal,
        b"S": _step_signal,
        b"Z": _insert_breakpoint,
        b"z": _remove_breakpoint,
        b"H": _set_thread,
        b"T": _thread_alive,
        b"D": _detach,
        b"k": _kill,
    }
