"""The x86-64 register layout shown to gdb and its target description XML.

The layout is gdb's own amd64 set, in this order (which is also the order of the `g` packet and the
register numbers of `p`/`P`):

  0-15   rax rbx rcx rdx rsi rdi rbp rsp r8..r15     64-bit   (org.gnu.gdb.i386.core)
  16     rip                                         64-bit
  17     eflags                                      32-bit
  18-23  cs ss ds es fs gs                           32-bit
  24-31  st0..st7                                    80-bit   (x87; gdb requires them in the core)
  32-39  fctrl fstat ftag fiseg fioff foseg fooff fop 32-bit
  40-55  xmm0..xmm15                                 128-bit  (org.gnu.gdb.i386.sse)
  56     mxcsr                                       32-bit
  57     orig_rax                                    64-bit   (org.gnu.gdb.i386.linux)
  58-59  fs_base gs_base                             64-bit   (org.gnu.gdb.i386.segments)

`orig_rax` exists because gdb's GNU/Linux x86-64 support (the default OS ABI of a Linux gdb, also
used for static musl guests) writes it whenever it changes the PC; the server accepts and ignores
writes to it. All values are little-endian on the wire; a register the target does not provide is
sent as `xx` pairs ("unavailable")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .packets import PacketError, decode_le, encode_le
from .target import GdbSignal

__all__ = [
    "GPR_NAMES",
    "REGISTERS",
    "REGISTER_INDEX",
    "RegisterDef",
    "TARGET_XML",
    "decode_g_packet",
    "encode_g_packet",
    "encode_register",
    "g_packet_length",
    "signal_for_vector",
]


@dataclass(frozen=True)
class RegisterDef:
    """One register of the layout: its gdb name, width in bits, target-description type and
    (optional) register group."""

    name: str
    bitsize: int
    type: str
    group: str | None = None

    @property
    def size(self) -> int:
        """Width in bytes."""
        return self.bitsize // 8


GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
"""The 16 general-purpose registers in gdb order."""

_CORE: tuple[RegisterDef, ...] = (
    *(RegisterDef(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64") for n in GPR_NAMES),
    RegisterDef("rip", 64, "code_ptr"),
    RegisterDef("eflags", 32, "i386_eflags"),
    *(RegisterDef(n, 32, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")),
    *(RegisterDef(f"st{i}", 80, "i387_ext") for i in range(8)),
    *(RegisterDef(n, 32, "int", "float")
      for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")),
)
_SSE: tuple[RegisterDef, ...] = (
    *(RegisterDef(f"xmm{i}", 128, "vec128") for i in range(16)),
    RegisterDef("mxcsr", 32, "i386_mxcsr", "vector"),
)
_LINUX: tuple[RegisterDef, ...] = (RegisterDef("orig_rax", 64, "int"),)
_SEGMENTS: tuple[RegisterDef, ...] = (RegisterDef("fs_base", 64, "int"), RegisterDef("gs_base", 64, "int"))

REGISTERS: tuple[RegisterDef, ...] = (*_CORE, *_SSE, *_LINUX, *_SEGMENTS)
"""All registers in target-description (and `g` packet) order; the index is the gdb register number."""

REGISTER_INDEX: dict[str, int] = {r.name: i for i, r in enumerate(REGISTERS)}
"""Register name -> gdb register number."""


def _reg_xml(reg: RegisterDef, regnum: int | None = None) -> str:
    attrs = f'name="{reg.name}" bitsize="{reg.bitsize}" type="{reg.type}"'
    if regnum is not None:
        attrs += f' regnum="{regnum}"'
    if reg.group:
        attrs += f' group="{reg.group}"'
    return f"    <reg {attrs}/>\n"


_EFLAGS_FIELDS = (("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
                  ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
                  ("VIP", 20), ("ID", 21))
_MXCSR_FIELDS = (("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), ("IM", 7),
                 ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15))


def _flags_xml(ident: str, fields: tuple[tuple[str, int], ...]) -> str:
    body = "".join(f'      <field name="{n}" start="{b}" end="{b}"/>\n' for n, b in fields)
    return f'    <flags id="{ident}" size="4">\n{body}    </flags>\n'


def _build_target_xml() -> str:
    core = _flags_xml("i386_eflags", _EFLAGS_FIELDS) + "".join(_reg_xml(r) for r in _CORE)
    vectors = (("v4f", "ieee_single", 4), ("v2d", "ieee_double", 2), ("v16i8", "int8", 16),
               ("v8i16", "int16", 8), ("v4i32", "int32", 4), ("v2i64", "int64", 2))
    sse = "".join(f'    <vector id="{i}" type="{t}" count="{c}"/>\n' for i, t, c in vectors)
    union_fields = (("v4_float", "v4f"), ("v2_double", "v2d"), ("v16_int8", "v16i8"),
                    ("v8_int16", "v8i16"), ("v4_int32", "v4i32"), ("v2_int64", "v2i64"),
                    ("uint128", "uint128"))
    sse += ('    <union id="vec128">\n'
            + "".join(f'      <field name="{n}" type="{t}"/>\n' for n, t in union_fields)
            + "    </union>\n")
    sse += _flags_xml("i386_mxcsr", _MXCSR_FIELDS)
    sse += "".join(_reg_xml(r, REGISTER_INDEX[r.name] if i == 0 else None) for i, r in enumerate(_SSE))
    linux = _reg_xml(_LINUX[0], REGISTER_INDEX["orig_rax"])
    segments = "".join(_reg_xml(r, REGISTER_INDEX[r.name] if i == 0 else None)
                       for i, r in enumerate(_SEGMENTS))
    return (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">\n'
        '<target version="1.0">\n'
        "  <architecture>i386:x86-64</architecture>\n"
        f'  <feature name="org.gnu.gdb.i386.core">\n{core}  </feature>\n'
        f'  <feature name="org.gnu.gdb.i386.sse">\n{sse}  </feature>\n'
        f'  <feature name="org.gnu.gdb.i386.linux">\n{linux}  </feature>\n'
        f'  <feature name="org.gnu.gdb.i386.segments">\n{segments}  </feature>\n'
        "</target>\n"
    )


TARGET_XML: str = _build_target_xml()
"""The target description served as `target.xml` (one self-contained document, no includes)."""


def encode_register(reg: RegisterDef, value: int | None) -> str:
    """Hex of one register for `g`/`p`: little-endian at its width, or `xx` pairs if `value` is None."""
    if value is None:
        return "xx" * reg.size
    return encode_le(value, reg.size)


def g_packet_length() -> int:
    """Length in hex characters of a full `g` reply."""
    return sum(2 * r.size for r in REGISTERS)


def encode_g_packet(values: Mapping[str, int]) -> str:
    """The `g` reply for `values` (registers missing from it are unavailable)."""
    return "".join(encode_register(r, values.get(r.name)) for r in REGISTERS)


def decode_g_packet(data: str) -> dict[str, int]:
    """Decode a `G` payload into register values. Registers sent as `xx` and those past the end of a
    short payload are left out. Raises `PacketError` on malformed data or a payload that is too long or
    ends inside a register."""
    if len(data) > g_packet_length():
        raise PacketError("G packet longer than the register set")
    values: dict[str, int] = {}
    pos = 0
    for reg in REGISTERS:
        if pos >= len(data):
            break
        chunk = data[pos:pos + 2 * reg.size]
        if len(chunk) < 2 * reg.size:
            raise PacketError(f"G packet ends inside register {reg.name}")
        pos += len(chunk)
        if chunk.lower().strip("x") == "":
            continue
        values[reg.name] = decode_le(chunk)
    return values


def signal_for_vector(vector: int) -> int:
    """The gdb signal to report for x86 CPU exception `vector` (Linux's mapping): #DE/#MF/#XM -> SIGFPE,
    #DB/#BP -> SIGTRAP, #UD -> SIGILL, #NP/#SS/#AC -> SIGBUS, everything else (#GP, #PF, ...) ->
    SIGSEGV."""
    if vector in (0, 16, 19):
        return GdbSignal.SIGFPE
    if vector in (1, 3):
        return GdbSignal.SIGTRAP
    if vector == 6:
        return GdbSignal.SIGILL
    if vector in (11, 12, 17):
        return GdbSignal.SIGBUS
    return GdbSignal.SIGSEGV
