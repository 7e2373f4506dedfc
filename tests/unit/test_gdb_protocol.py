"""The GDB remote serial protocol server (snapcell.debug), against an in-memory fake target: the
packet codec (property-tested), a real TCP client speaking RSP, and — when /usr/bin/gdb exists — the
real gdb. No KVM needed. Every socket read has a timeout."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapcell.debug import (
    DebugAccessError,
    DebugSession,
    GdbSignal,
    ResumeAction,
    StopEvent,
    StopReason,
)
from snapcell.debug.packets import (
    PacketError,
    PacketReader,
    StreamEvent,
    StreamEventKind,
    checksum,
    decode_le,
    encode_le,
    escape_binary,
    frame_packet,
    hex_decode,
    hex_encode,
    parse_hex_int,
    unescape_binary,
)
from snapcell.debug.server import MAX_MEMORY_READ, stop_reply
from snapcell.debug.x86_64 import (
    REGISTER_INDEX,
    REGISTERS,
    TARGET_XML,
    decode_g_packet,
    encode_g_packet,
    g_packet_length,
    signal_for_vector,
)
from snapcell.errors import SandboxStateError

TIMEOUT = 5.0

CODE_BASE = 0x401000
STACK_BASE = 0x7FF000
PAGE = 0x1000


# ---------------------------------------------------------------------------------------------- codec

def test_checksum_known_values() -> None:
    assert checksum(b"") == 0
    assert checksum(b"OK") == 0x9A
    assert frame_packet(b"OK") == b"$OK#9a"
    assert frame_packet(b"qSupported") == b"$qSupported#37"


def test_frame_refuses_unescaped_specials() -> None:
    for bad in (b"a$b", b"a#b", b"a*b"):
        with pytest.raises(ValueError):
            frame_packet(bad)


def test_escape_known_values() -> None:
    assert escape_binary(b"#$}*a") == b"}\x03}\x04}\x5d}\x0aa"
    assert unescape_binary(b"}\x03}\x04}\x5d}\x0aa") == b"#$}*a"
    with pytest.raises(PacketError):
        unescape_binary(b"abc}")


@given(st.binary(max_size=512))
def test_escape_round_trip(data: bytes) -> None:
    escaped = escape_binary(data)
    assert not any(c in b"#$*" for c in escaped)
    assert unescape_binary(escaped) == data


@given(st.binary(max_size=256))
def test_hex_round_trip(data: bytes) -> None:
    assert hex_decode(hex_encode(data)) == data
    assert hex_decode(hex_encode(data).upper()) == data


@given(st.integers(min_value=1, max_value=16).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(min_value=0, max_value=(1 << (8 * size)) - 1))))
def test_le_round_trip(size_value: tuple[int, int]) -> None:
    size, value = size_value
    text = encode_le(value, size)
    assert len(text) == 2 * size
    assert decode_le(text) == value


def test_le_wraps_negative_and_hex_errors() -> None:
    assert encode_le(-1, 4) == "ffffffff"
    assert encode_le(0x1122, 2) == "2211"
    for bad in ("abc", "zz", "0g"):
        with pytest.raises(PacketError):
            hex_decode(bad)
    for bad in ("", "x1", "1" * 33):
        with pytest.raises(PacketError):
            parse_hex_int(bad)
    assert parse_hex_int("DEADbeef") == 0xDEADBEEF


def _feed_in_chunks(data: bytes, cuts: list[int]) -> list[StreamEvent]:
    reader = PacketReader()
    events: list[StreamEvent] = []
    pos = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        events += reader.feed(data[pos:cut])
        pos = max(pos, cut)
    events += reader.feed(data[pos:])
    return events


@given(st.lists(st.binary(max_size=200), max_size=5), st.lists(st.integers(min_value=0), max_size=8))
def test_reader_decodes_framed_packets_split_anywhere(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(b"+" + frame_packet(escape_binary(p)) for p in payloads)
    events = _feed_in_chunks(stream, cuts)
    assert [e.kind for e in events] == [StreamEventKind.ACK, StreamEventKind.PACKET] * len(payloads)
    assert [unescape_binary(e.payload) for e in events if e.kind is StreamEventKind.PACKET] == payloads


def test_reader_bad_checksum_garbage_and_interrupt() -> None:
    reader = PacketReader(max_payload=16)
    events = reader.feed(b"garbage\x03-$g#00$m0,1#fa$abc$g#67" + b"$" + b"a" * 40 + b"#00")
    kinds = [e.kind for e in events]
    assert kinds == [StreamEventKind.INTERRUPT, StreamEventKind.NAK, StreamEventKind.BAD_PACKET,
                     StreamEventKind.PACKET, StreamEventKind.PACKET, StreamEventKind.OVERSIZED]
    assert events[3].payload == b"m0,1" and events[4].payload == b"g"
    assert reader.feed(b"$g#zz")[0].kind is StreamEventKind.BAD_PACKET


# -------------------------------------------------------------------------------- register layout

def test_register_layout_matches_gdb_amd64() -> None:
    names = [r.name for r in REGISTERS]
    assert names[:17] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                          "r11", "r12", "r13", "r14", "r15", "rip"]
    assert REGISTER_INDEX["eflags"] == 17 and REGISTER_INDEX["gs"] == 23
    assert REGISTER_INDEX["st0"] == 24 and REGISTER_INDEX["fop"] == 39
    assert REGISTER_INDEX["xmm0"] == 40 and REGISTER_INDEX["mxcsr"] == 56
    assert REGISTER_INDEX["orig_rax"] == 57 and REGISTER_INDEX["fs_base"] == 58
    assert names == re.findall(r'<reg name="([^"]+)"', TARGET_XML)
    assert g_packet_length() == 2 * 560


@given(st.dictionaries(st.sampled_from([r.name for r in REGISTERS]), st.integers(min_value=0)))
def test_g_packet_round_trip(values: dict[str, int]) -> None:
    masked = {n: v & ((1 << REGISTERS[REGISTER_INDEX[n]].bitsize) - 1) for n, v in values.items()}
    text = encode_g_packet(values)
    assert len(text) == g_packet_length()
    assert decode_g_packet(text) == masked


def test_g_packet_errors() -> None:
    with pytest.raises(PacketError):
        decode_g_packet("00" * 561)
    with pytest.raises(PacketError):
        decode_g_packet("00" * 7)            # ends inside rax
    assert decode_g_packet("01" + "00" * 7) == {"rax": 1}


def test_stop_replies_and_signals() -> None:
    assert stop_reply(StopEvent(StopReason.BREAKPOINT, GdbSignal.SIGTRAP)) == b"T05swbreak:;thread:01;"
    assert stop_reply(StopEvent(StopReason.STEP, GdbSignal.SIGTRAP)) == b"T05thread:01;"
    assert stop_reply(StopEvent(StopReason.INTERRUPT, GdbSignal.SIGINT)) == b"T02thread:01;"
    assert stop_reply(StopEvent(StopReason.FAULT, GdbSignal.SIGSEGV)) == b"T0bthread:01;"
    assert stop_reply(StopEvent(StopReason.EXITED, 0, exit_code=0)) == b"W00"
    assert stop_reply(StopEvent(StopReason.EXITED, 0, exit_code=257)) == b"W01"
    assert signal_for_vector(0) == GdbSignal.SIGFPE and signal_for_vector(6) == GdbSignal.SIGILL
    assert signal_for_vector(14) == GdbSignal.SIGSEGV and signal_for_vector(13) == GdbSignal.SIGSEGV
    assert signal_for_vector(3) == GdbSignal.SIGTRAP and signal_for_vector(17) == GdbSignal.SIGBUS


# ------------------------------------------------------------------------------------ fake target

class FakeTarget:
    """An in-memory DebugTarget: a code page, a stack page, GPRs and a breakpoint set (breakpoints
    are bookkeeping only; reads return the original bytes)."""

    def __init__(self) -> None:
        self.regs: dict[str, int] = {n: 0 for n in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
            "r13", "r14", "r15", "rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs", "fs_base",
            "gs_base", "mxcsr", *(f"xmm{i}" for i in range(16)))}
        self.regs.update(rip=CODE_BASE, rsp=STACK_BASE + PAGE - 0x40, eflags=0x202, cs=0x33, ss=0x2B,
                         rax=0x1122334455667788, mxcsr=0x1F80, xmm1=0x0102030405060708090A0B0C0D0E0F10)
        self.memory = {CODE_BASE: bytearray(PAGE), STACK_BASE: bytearray(PAGE)}
        self.memory[CODE_BASE][:8] = bytes([0x55, 0x48, 0x89, 0xE5, 0x90, 0x90, 0xC3, 0xCC])
        self.breakpoints: set[int] = set()
        self.calls: list[tuple[str, object]] = []
        self.interrupted = threading.Event()
        self.resumed = threading.Event()

    def _region(self, addr: int, length: int) -> tuple[bytearray, int]:
        for base, mem in self.memory.items():
            if base <= addr and addr + length <= base + len(mem):
                return mem, addr - base
        raise DebugAccessError(f"no memory at {addr:#x}+{length}")

    def read_registers(self) -> dict[str, int]:
        return dict(self.regs)

    def write_registers(self, values: dict[str, int]) -> None:
        unknown = set(values) - set(self.regs)
        if unknown:
            raise DebugAccessError(f"unknown registers {unknown}")
        self.calls.append(("write_registers", dict(values)))
        self.regs.update(values)

    def read_memory(self, addr: int, length: int) -> bytes:
        mem, off = self._region(addr, length)
        return bytes(mem[off:off + length])

    def write_memory(self, addr: int, data: bytes) -> None:
        mem, off = self._region(addr, len(data))
        mem[off:off + len(data)] = data

    def insert_breakpoint(self, addr: int) -> None:
        self._region(addr, 1)
        self.breakpoints.add(addr)

    def remove_breakpoint(self, addr: int) -> None:
        if addr not in self.breakpoints:
            raise DebugAccessError("no breakpoint there")
        self.breakpoints.discard(addr)

    def resume(self, step: bool) -> None:
        self.calls.append(("resume", step))
        self.resumed.set()

    def interrupt(self) -> None:
        self.calls.append(("interrupt", None))
        self.interrupted.set()

    def detach(self) -> None:
        self.calls.append(("detach", None))
        self.breakpoints.clear()

    def kill(self) -> None:
        self.calls.append(("kill", None))


# ------------------------------------------------------------------------------------ RSP client

class RspClient:
    """A minimal gdb: frames packets, checks checksums, acks, and times out on every read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.ack = True

    def close(self) -> None:
        self.sock.close()

    def _byte(self) -> int:
        if not self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data
        b = self.buf[0]
        del self.buf[0]
        return b

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect_ack(self) -> bytes:
        b = self._byte()
        assert b in b"+-", f"expected an ack, got {bytes([b])!r}"
        return bytes([b])

    def send(self, payload: bytes) -> None:
        self.send_raw(frame_packet(payload))
        if self.ack:
            assert self.expect_ack() == b"+"

    def recv(self, ack: bool = True) -> bytes:
        while self._byte() != ord("$"):
            pass
        data = bytearray()
        while (b := self._byte()) != ord("#"):
            data.append(b)
        cs = bytes([self._byte(), self._byte()])
        assert int(cs, 16) == checksum(bytes(data)), "bad checksum from server"
        if self.ack and ack:
            self.send_raw(b"+")
        return bytes(data)

    def cmd(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv()

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:      # closed with our late "+" ack unread: an RST
            return True
        except (ConnectionError, TimeoutError):
            return False


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def session(target: FakeTarget) -> Iterator[DebugSession]:
    s = DebugSession(target, port=0)
    s.start()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def stopped(session: DebugSession) -> DebugSession:
    """A session whose guest is stopped at its entry."""
    session.notify_stop(StopEvent(StopReason.ENTRY, GdbSignal.SIGTRAP))
    return session


@pytest.fixture
def client(stopped: DebugSession) -> Iterator[RspClient]:
    c = RspClient(stopped.port)
    try:
        yield c
    finally:
        c.close()


def wait_until(cond: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# ------------------------------------------------------------------------------- protocol over TCP

def test_handshake_and_queries(client: RspClient, stopped: DebugSession) -> None:
    assert stopped.wait_for_connection(TIMEOUT) and stopped.connected
    features = client.cmd(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386").split(b";")
    assert b"qXfer:features:read+" in features and b"swbreak+" in features
    assert b"QStartNoAckMode+" in features and b"vContSupported+" in features
    size = int(next(f for f in features if f.startswith(b"PacketSize=")).split(b"=")[1], 16)
    assert size >= 0x1000
    assert client.cmd(b"vMustReplyEmpty") == b""
    assert client.cmd(b"?") == b"T05thread:01;"
    assert client.cmd(b"qAttached") == b"1"
    assert client.cmd(b"qC") == b"QC01"
    assert client.cmd(b"qfThreadInfo") == b"m01"
    assert client.cmd(b"qsThreadInfo") == b"l"
    assert client.cmd(b"Hg0") == b"OK" and client.cmd(b"Hc-1") == b"OK"
    assert client.cmd(b"T01") == b"OK"
    assert client.cmd(b"qOffsets") == b""
    assert client.cmd(b"qSymbol::") == b"OK"
    assert client.cmd(b"vCont?") == b"vCont;c;C;s;S"
    assert client.cmd(b"qTStatus") == b""
    assert client.cmd(b"Z1,401000,1") == b"" and client.cmd(b"Z2,7ff000,8") == b""


def test_target_xml_read_in_chunks(client: RspClient) -> None:
    doc = b""
    while True:
        reply = client.cmd(b"qXfer:features:read:target.xml:%x,%x" % (len(doc), 0x100))
        assert reply[:1] in (b"m", b"l")
        doc += unescape_binary(reply[1:])
        if reply[:1] == b"l":
            break
    assert doc.decode() == TARGET_XML
    assert b"org.gnu.gdb.i386.core" in doc and b"org.gnu.gdb.i386.segments" in doc
    assert client.cmd(b"qXfer:features:read:target.xml:%x,10" % len(doc)) == b"l"
    assert client.cmd(b"qXfer:features:read:other.xml:0,10").startswith(b"E")


def test_no_ack_mode(client: RspClient) -> None:
    assert client.cmd(b"QStartNoAckMode") == b"OK"
    client.ack = False
    assert client.cmd(b"qC") == b"QC01"
    assert client.cmd(b"?") == b"T05thread:01;"


def test_registers_g_G_p_P(client: RspClient, target: FakeTarget) -> None:
    g = client.cmd(b"g").decode()
    assert len(g) == g_packet_length()
    values = decode_g_packet(g)
    assert values["rax"] == 0x1122334455667788 and values["rip"] == CODE_BASE
    assert values["xmm1"] == target.regs["xmm1"] and values["mxcsr"] == 0x1F80
    assert "st0" not in values and g[2 * 164:2 * 174] == "xx" * 10    # x87: unavailable
    assert client.cmd(b"p10") == encode_le(CODE_BASE, 8).encode()    # rip is register 16
    assert client.cmd(b"p11") == b"02020000"                          # eflags: 32-bit
    assert client.cmd(b"p18") == b"xx" * 10                           # st0
    assert client.cmd(b"p3a") == b"00" * 8                            # fs_base
    assert client.cmd(b"p99").startswith(b"E")

    assert client.cmd(b"P0=" + encode_le(42, 8).encode()) == b"OK"
    assert target.regs["rax"] == 42
    assert client.cmd(b"P39=" + encode_le(-1, 8).encode()) == b"OK"  # orig_rax: accepted, ignored
    assert client.cmd(b"P18=" + b"00" * 10).startswith(b"E")          # st0: not provided
    assert client.cmd(b"P0=1234").startswith(b"E")                    # wrong width
    assert client.cmd(b"P0").startswith(b"E")

    values = decode_g_packet(client.cmd(b"g").decode())
    values["rbx"] = 7
    values["rip"] = CODE_BASE + 4
    values["st0"] = 1                                                 # ignored: not provided
    target.calls.clear()
    assert client.cmd(b"G" + encode_g_packet(values).encode()) == b"OK"
    assert target.calls == [("write_registers", {"rbx": 7, "rip": CODE_BASE + 4})]
    assert client.cmd(b"G" + b"00" * 600).startswith(b"E")


def test_memory_m_M_X(client: RspClient, target: FakeTarget) -> None:
    assert client.cmd(b"m401000,8") == b"554889e59090c3cc"
    assert client.cmd(b"M401010,4:deadbeef") == b"OK"
    assert target.memory[CODE_BASE][0x10:0x14] == b"\xde\xad\xbe\xef"
    payload = bytes([0x23, 0x24, 0x7D, 0x2A, 0x00, 0x03])
    assert client.cmd(b"X401020,6:" + escape_binary(payload)) == b"OK"
    assert target.memory[CODE_BASE][0x20:0x26] == payload
    assert client.cmd(b"m401020,6") == hex_encode(payload).encode()
    assert client.cmd(b"X401000,0:") == b"OK"
    # refused addresses
    assert client.cmd(b"m0,4") == b"E03"
    assert client.cmd(b"M10,1:00") == b"E03"
    assert client.cmd(b"X10,1:a") == b"E03"
    # a read running off the end of mapped memory returns the readable prefix
    assert client.cmd(b"m401ffe,4") == hex_encode(bytes(2)).encode()
    # malformed or absurd requests: an error reply, and the server keeps serving
    assert client.cmd(b"mffffffffffffffff,ffffffffffffffff").startswith(b"E")
    assert client.cmd(b"m401000,%x" % (MAX_MEMORY_READ + 1)).startswith(b"E")
    assert client.cmd(b"m401000,100000000").startswith(b"E")
    assert client.cmd(b"m401000").startswith(b"E")
    assert client.cmd(b"mzz,1").startswith(b"E")
    assert client.cmd(b"M401000,2:00").startswith(b"E")               # length mismatch
    assert client.cmd(b"M401000,1:0g").startswith(b"E")
    assert client.cmd(b"X401000,1:}").startswith(b"E")
    assert len(client.cmd(b"m401000,%x" % MAX_MEMORY_READ)) == 2 * PAGE  # short read: one page
    assert len(client.cmd(b"m401000,1000")) == 2 * PAGE
    assert client.cmd(b"m401000,1") == b"55"


def test_breakpoints(client: RspClient, target: FakeTarget) -> None:
    assert client.cmd(b"Z0,401004,1") == b"OK"
    assert target.breakpoints == {0x401004}
    assert client.cmd(b"z0,401004,1") == b"OK"
    assert target.breakpoints == set()
    assert client.cmd(b"z0,401004,1") == b"E04"                        # target refuses
    assert client.cmd(b"Z0,10,1") == b"E04"
    assert client.cmd(b"Z0").startswith(b"E")
    assert client.cmd(b"z1,401004,1") == b""


def test_bad_checksum_and_garbage(client: RspClient) -> None:
    client.send_raw(b"$g#00")
    assert client.expect_ack() == b"-"                                # gdb would retransmit
    client.send_raw(b"garbage bytes that are not packets")
    assert client.cmd(b"qC") == b"QC01"
    # The server retransmits its last reply on '-'.
    client.send(b"qC")
    assert client.recv(ack=False) == b"QC01"
    client.send_raw(b"-")
    assert client.recv() == b"QC01"
    assert client.cmd(b"") == b""                                     # empty packet
    assert client.cmd(b"\x01\x02bogus") == b""                        # unknown -> empty
    assert client.cmd(b"vCont;x").startswith(b"E")
    client.send(b"q" + b"a" * 0x5000)                                 # longer than PacketSize
    assert client.recv() == b"E01"
    assert client.cmd(b"?") == b"T05thread:01;"


def test_continue_breakpoint_stop_reply(client: RspClient, stopped: DebugSession,
                                        target: FakeTarget) -> None:
    assert client.cmd(b"Z0,401004,1") == b"OK"
    client.send(b"c")
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.CONTINUE
    assert target.calls[-1] == ("resume", False)
    assert client.cmd(b"g").startswith(b"E05")                       # running: no target access
    target.regs["rip"] = 0x401004
    stopped.notify_stop(StopEvent(StopReason.BREAKPOINT, GdbSignal.SIGTRAP))
    assert client.recv() == b"T05swbreak:;thread:01;"
    assert client.cmd(b"p10") == encode_le(0x401004, 8).encode()
    client.send(b"vCont;s:01")
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.STEP
    assert target.calls[-1] == ("resume", True)
    stopped.notify_stop(StopEvent(StopReason.STEP, GdbSignal.SIGTRAP))
    assert client.recv() == b"T05thread:01;"
    client.send(b"s")
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.STEP
    stopped.notify_stop(StopEvent(StopReason.FAULT, GdbSignal.SIGSEGV))
    assert client.recv() == b"T0bthread:01;"
    assert client.cmd(b"?") == b"T0bthread:01;"
    client.send(b"vCont;c")
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.CONTINUE
    stopped.notify_stop(StopEvent(StopReason.EXITED, 0, exit_code=3))
    assert client.recv() == b"W03"


def test_ctrl_c_interrupts(client: RspClient, stopped: DebugSession, target: FakeTarget) -> None:
    client.send(b"c")
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.CONTINUE
    client.send_raw(b"\x03")
    assert target.interrupted.wait(TIMEOUT)
    stopped.notify_stop(StopEvent(StopReason.INTERRUPT, GdbSignal.SIGINT))
    assert client.recv() == b"T02thread:01;"


def test_ctrl_c_while_stopped_is_ignored(client: RspClient, target: FakeTarget) -> None:
    client.send_raw(b"\x03")
    assert client.cmd(b"?") == b"T05thread:01;"
    assert ("interrupt", None) not in target.calls


def test_detach(client: RspClient, stopped: DebugSession, target: FakeTarget) -> None:
    assert client.cmd(b"Z0,401004,1") == b"OK"
    assert client.cmd(b"D") == b"OK"
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.DETACHED
    assert ("detach", None) in target.calls and not target.breakpoints
    assert client.closed_by_server()
    # Debugging is over: later stops do not block.
    stopped.notify_stop(StopEvent(StopReason.BREAKPOINT, GdbSignal.SIGTRAP))
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.DETACHED
    assert target.calls.count(("detach", None)) == 1


def test_detach_while_running(client: RspClient, stopped: DebugSession, target: FakeTarget) -> None:
    client.send(b"c")
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.CONTINUE
    assert client.cmd(b"D") == b"OK"
    assert ("detach", None) not in target.calls                      # the guest is running
    stopped.notify_stop(StopEvent(StopReason.BREAKPOINT, GdbSignal.SIGTRAP))
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.DETACHED
    assert target.calls.count(("detach", None)) == 1


def test_kill(client: RspClient, stopped: DebugSession, target: FakeTarget) -> None:
    client.send(b"k")
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.KILLED
    assert ("kill", None) in target.calls
    assert client.closed_by_server()
    # The session stays armed: the next stop waits for a new gdb.
    stopped.notify_stop(StopEvent(StopReason.ENTRY, GdbSignal.SIGTRAP))
    with pytest.raises(TimeoutError):
        stopped.wait_for_resume(0.05)
    c2 = RspClient(stopped.port)
    try:
        assert c2.cmd(b"?") == b"T05thread:01;"
        c2.send(b"c")
        assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.CONTINUE
    finally:
        c2.close()


def test_kill_while_running(client: RspClient, stopped: DebugSession, target: FakeTarget) -> None:
    client.send(b"c")
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.CONTINUE
    client.send(b"k")
    assert target.interrupted.wait(TIMEOUT)
    stopped.notify_stop(StopEvent(StopReason.INTERRUPT, GdbSignal.SIGINT))
    assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.KILLED
    assert ("kill", None) in target.calls


def test_stop_waits_for_a_connection(session: DebugSession, target: FakeTarget) -> None:
    assert not session.connected
    assert not session.wait_for_connection(0.01)
    result: list[ResumeAction] = []

    def app_thread() -> None:
        session.notify_stop(StopEvent(StopReason.ENTRY, GdbSignal.SIGTRAP))
        result.append(session.wait_for_resume(TIMEOUT))

    t = threading.Thread(target=app_thread)
    t.start()
    time.sleep(0.05)
    assert not result
    c = RspClient(session.port)
    try:
        assert session.wait_for_connection(TIMEOUT)
        assert c.cmd(b"?") == b"T05thread:01;"
        c.send(b"c")
        t.join(TIMEOUT)
        assert result == [ResumeAction.CONTINUE]
    finally:
        c.close()
    wait_until(lambda: not session.connected)


def test_disconnect_keeps_the_guest_stopped(client: RspClient, stopped: DebugSession) -> None:
    assert client.cmd(b"?") == b"T05thread:01;"
    client.close()
    wait_until(lambda: not stopped.connected)
    with pytest.raises(TimeoutError):
        stopped.wait_for_resume(0.05)
    c2 = RspClient(stopped.port)
    try:
        assert c2.cmd(b"?") == b"T05thread:01;"
        c2.send(b"s")
        assert stopped.wait_for_resume(TIMEOUT) is ResumeAction.STEP
    finally:
        c2.close()


def test_second_connection_is_refused(client: RspClient, stopped: DebugSession) -> None:
    assert client.cmd(b"qC") == b"QC01"
    other = RspClient(stopped.port)
    try:
        assert other.closed_by_server()
    finally:
        other.close()
    assert client.cmd(b"qC") == b"QC01"


def test_connect_while_running_interrupts(session: DebugSession, target: FakeTarget) -> None:
    session.notify_stop(StopEvent(StopReason.ENTRY, GdbSignal.SIGTRAP))
    c = RspClient(session.port)
    c.send(b"c")
    assert session.wait_for_resume(TIMEOUT) is ResumeAction.CONTINUE
    c.close()
    wait_until(lambda: not session.connected)
    c2 = RspClient(session.port)
    try:
        c2.send(b"?")                                                 # the reply waits for a stop
        assert target.interrupted.wait(TIMEOUT)
        session.notify_stop(StopEvent(StopReason.INTERRUPT, GdbSignal.SIGINT))
        assert c2.recv() == b"T02thread:01;"
    finally:
        c2.close()


def test_close_releases_a_blocked_app_thread(session: DebugSession, target: FakeTarget) -> None:
    session.notify_stop(StopEvent(StopReason.ENTRY, GdbSignal.SIGTRAP))
    result: list[ResumeAction] = []
    t = threading.Thread(target=lambda: result.append(session.wait_for_resume(TIMEOUT)))
    t.start()
    session.close()
    t.join(TIMEOUT)
    assert result == [ResumeAction.DETACHED]
    assert target.calls == [("detach", None)]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", session.port), timeout=TIMEOUT).close()


def test_wait_for_resume_without_stop_is_an_error(session: DebugSession) -> None:
    with pytest.raises(SandboxStateError):
        session.wait_for_resume(0.01)


def test_listens_on_loopback_only(session: DebugSession) -> None:
    assert session.port > 0
    probe = socket.create_connection(("127.0.0.1", session.port), timeout=TIMEOUT)
    try:
        assert probe.getpeername()[0] == "127.0.0.1"
    finally:
        probe.close()
    with pytest.raises(ValueError):
        DebugSession(FakeTarget(), port=70000)
    with pytest.raises(SandboxStateError):
        session.start()


# ------------------------------------------------------------------------------------------ real gdb

GDB = shutil.which("gdb")


def _run_gdb(port: int, *commands: str) -> str:
    assert GDB is not None
    args = [GDB, "-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", "set remotetimeout 5",
            "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def _without_no_file_warning(out: str) -> str:
    """gdb's output minus its complaint that no executable was given (these tests use none)."""
    return re.sub(r"warning: No executable has been specified.*?\"file\" command\.", "", out, flags=re.S)


def test_real_gdb_reads_registers_and_memory(stopped: DebugSession, target: FakeTarget) -> None:
    result: list[ResumeAction] = []
    t = threading.Thread(target=lambda: result.append(stopped.wait_for_resume(60)))
    t.start()
    out = _run_gdb(stopped.port, "info registers rip", "info registers eflags", "p/x $rax",
                   "p/x $xmm1.uint128", "p/x $fs_base", f"x/4xb {CODE_BASE:#x}", "detach")
    t.join(TIMEOUT)
    assert re.search(r"^rip\s+0x401000\s", out, re.M), out
    assert re.search(r"^eflags\s+0x202\s+\[ IF \]", out, re.M), out
    assert "0x1122334455667788" in out, out
    assert "0x102030405060708090a0b0c0d0e0f10" in out, out
    assert f"{CODE_BASE:#x}:\t0x55\t0x48\t0x89\t0xe5" in out, out
    assert "warning" not in _without_no_file_warning(out).lower(), out
    assert result == [ResumeAction.DETACHED]
    assert ("detach", None) in target.calls


def test_real_gdb_breakpoint_continue_step(stopped: DebugSession, target: FakeTarget) -> None:
    """gdb sets a breakpoint, continues (the scripted 'guest' stops at the breakpoint), single-steps
    (it removes the breakpoint, steps over it, re-inserts), writes a register, then kills."""
    actions: list[ResumeAction] = []

    def app_thread() -> None:
        while True:
            action = stopped.wait_for_resume(60)
            actions.append(action)
            if action is ResumeAction.CONTINUE:
                target.regs["rip"] = min(target.breakpoints) if target.breakpoints else CODE_BASE + 6
                stopped.notify_stop(StopEvent(StopReason.BREAKPOINT, GdbSignal.SIGTRAP))
            elif action is ResumeAction.STEP:
                target.regs["rip"] += 1
                stopped.notify_stop(StopEvent(StopReason.STEP, GdbSignal.SIGTRAP))
            else:
                return

    t = threading.Thread(target=app_thread)
    t.start()
    out = _run_gdb(stopped.port, f"break *{CODE_BASE + 4:#x}", "continue", "info registers rip",
                   "stepi", "info registers rip", "set var $rbx = 0x77", "p/x $rbx", "kill")
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert "Breakpoint 1, 0x0000000000401004" in out, out
    assert re.search(r"^rip\s+0x401004\s", out, re.M), out
    assert re.search(r"^rip\s+0x401005\s", out, re.M), out
    assert "$1 = 0x77" in out, out
    assert target.regs["rbx"] == 0x77
    assert actions[0] is ResumeAction.CONTINUE and ResumeAction.STEP in actions
    assert actions[-1] is ResumeAction.KILLED
    assert "warning" not in _without_no_file_warning(out).lower(), out
