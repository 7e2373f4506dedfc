"""GDB remote serial protocol framing: checksums, packet framing, binary escaping, hex helpers and an
incremental parser of the byte stream gdb sends.

A packet on the wire is `$payload#cc` where `cc` is the modulo-256 sum of the payload bytes in two
lowercase hex digits. Binary payloads (the `X` packet from gdb, `qXfer` replies from us) escape the
bytes `#`, `$`, `}` and `*` as `}` followed by the byte XOR 0x20."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from snapcell.errors import SnapcellError

__all__ = [
    "ESCAPE",
    "INTERRUPT_BYTE",
    "MAX_PACKET_SIZE",
    "PacketError",
    "PacketReader",
    "StreamEvent",
    "StreamEventKind",
    "checksum",
    "decode_le",
    "encode_le",
    "escape_binary",
    "frame_packet",
    "hex_decode",
    "hex_encode",
    "parse_hex_int",
    "unescape_binary",
]

ESCAPE = 0x7D
"""The escape byte `}`."""

INTERRUPT_BYTE = 0x03
"""The out-of-band byte gdb sends for Ctrl-C while the target runs."""

MAX_PACKET_SIZE = 0x4000
"""The largest packet payload we accept (advertised to gdb as `PacketSize`)."""

_MUST_ESCAPE = frozenset(b"#$}*")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class PacketError(SnapcellError):
    """A malformed packet or packet argument (bad hex, bad escape, missing field)."""


def checksum(data: bytes) -> int:
    """The RSP checksum of a payload: the sum of its bytes modulo 256."""
    return sum(data) & 0xFF


def escape_binary(data: bytes) -> bytes:
    """Escape binary data for a packet payload: `#`, `$`, `}` and `*` become `}` + (byte ^ 0x20)."""
    out = bytearray()
    for b in data:
        if b in _MUST_ESCAPE:
            out.append(ESCAPE)
            out.append(b ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    """Undo `escape_binary`. Raises `PacketError` if the data ends with a lone escape byte."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b == ESCAPE:
            if i + 1 >= n:
                raise PacketError("escape byte at the end of binary data")
            out.append(data[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def frame_packet(payload: bytes) -> bytes:
    """Frame a payload as `$payload#cc`. The payload must already be escaped where needed: raw `$`,
    `#` and `*` (which gdb would take for run-length encoding) are refused with `ValueError`."""
    if any(b in b"$#*" for b in payload):
        raise ValueError("unescaped '$', '#' or '*' in a packet payload")
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def hex_encode(data: bytes) -> str:
    """Lowercase hex of a byte string (two digits per byte)."""
    return data.hex()


def hex_decode(text: str | bytes) -> bytes:
    """Decode a hex string (either case) to bytes; raises `PacketError` on odd length or non-hex."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if len(raw) % 2 or not all(c in _HEX_DIGITS for c in raw):
        raise PacketError(f"bad hex data {raw[:40]!r}")
    return bytes.fromhex(raw.decode("ascii"))


def parse_hex_int(text: str | bytes) -> int:
    """Parse an unsigned hex number as gdb writes it (no prefix, at least one digit)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if not raw or len(raw) > 32 or not all(c in _HEX_DIGITS for c in raw):
        raise PacketError(f"bad hex number {raw[:40]!r}")
    return int(raw, 16)


def encode_le(value: int, size: int) -> str:
    """Hex of `value` as `size` little-endian bytes (negative values wrap to two's complement)."""
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex()


def decode_le(text: str | bytes) -> int:
    """The unsigned integer whose little-endian bytes are the hex `text`."""
    return int.from_bytes(hex_decode(text), "little")


class StreamEventKind(enum.Enum):
    """What `PacketReader` found in the byte stream."""

    PACKET = "packet"
    """A complete packet with a valid checksum; `payload` is its (still escaped) data."""
    BAD_PACKET = "bad-packet"
    """A complete packet whose checksum is wrong or unreadable: answer `-` so gdb retransmits."""
    OVERSIZED = "oversized"
    """A packet longer than the reader's limit; its data was discarded."""
    ACK = "ack"
    """A `+`: gdb received our last packet."""
    NAK = "nak"
    """A `-`: gdb wants our last packet again."""
    INTERRUPT = "interrupt"
    """The Ctrl-C byte (0x03) outside a packet."""


@dataclass(frozen=True)
class StreamEvent:
    """One item of the incoming byte stream."""

    kind: StreamEventKind
    payload: bytes = b""


class PacketReader:
    """Incremental parser of the byte stream from gdb. Feed it whatever `recv` returned; it returns
    the complete events found so far and keeps partial packets for the next call. Bytes outside a
    packet other than `+`, `-` and 0x03 are ignored; a `$` inside a packet restarts the packet."""

    _IDLE, _DATA, _CSUM1, _CSUM2 = range(4)

    def __init__(self, max_payload: int = MAX_PACKET_SIZE) -> None:
        self._max = max_payload
        self._state = self._IDLE
        self._data = bytearray()
        self._oversized = False
        self._csum = bytearray()

    def reset(self) -> None:
        """Forget any partial packet (e.g. on a new connection)."""
        self._state = self._IDLE
        self._data.clear()
        self._csum.clear()
        self._oversized = False

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Consume `chunk` and return the events it completed, in order."""
        events: list[StreamEvent] = []
        for b in chunk:
            if self._state == self._IDLE:
                if b == 0x24:  # '$'
                    self._start()
                elif b == 0x2B:  # '+'
                    events.append(StreamEvent(StreamEventKind.ACK))
                elif b == 0x2D:  # '-'
                    events.append(StreamEvent(StreamEventKind.NAK))
                elif b == INTERRUPT_BYTE:
                    events.append(StreamEvent(StreamEventKind.INTERRUPT))
            elif self._state == self._DATA:
                if b == 0x23:  # '#'
                    self._state = self._CSUM1
                elif b == 0x24:  # a new packet starts: the previous one was garbage
                    self._start()
                elif len(self._data) >= self._max:
                    self._oversized = True
                else:
                    self._data.append(b)
            else:
                self._csum.append(b)
                if self._state == self._CSUM1:
                    self._state = self._CSUM2
                else:
                    events.append(self._finish())
        return events

    def _start(self) -> None:
        self._state = self._DATA
        self._data.clear()
        self._csum.clear()
        self._oversized = False

    def _finish(self) -> StreamEvent:
        self._state = self._IDLE
        payload = bytes(self._data)
        self._data.clear()
        if self._oversized:
            self._oversized = False
            return StreamEvent(StreamEventKind.OVERSIZED)
        csum = bytes(self._csum)
        if all(c in _HEX_DIGITS for c in csum) and int(csum, 16) == checksum(payload):
            return StreamEvent(StreamEventKind.PACKET, payload)
        return StreamEvent(StreamEventKind.BAD_PACKET, payload)
