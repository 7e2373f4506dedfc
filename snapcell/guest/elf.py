"""Loading a guest binary: a static, non-PIE x86-64 ELF built against the SDK.

The ELF is untrusted input: every header field that decides where bytes go is checked."""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from ..errors import GuestLoadError
from ..machine.layout import GUEST_BASE, MAX_MEMORY, PAGE, Perm, Segment, page_up
from .abi import SYSCALL_ENTRY_SYMBOL

MAX_GUEST_FILE = 256 << 20
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_PHDR = 1, 2, 3, 6
PF_X, PF_W, PF_R = 1, 2, 4


@dataclass(frozen=True)
class LoadSegment:
    """A PT_LOAD segment with its file bytes."""

    vaddr: int
    data: bytes
    memsz: int
    perm: Perm


@dataclass(frozen=True)
class GuestBinary:
    """A validated guest ELF: segments, entry, program headers location, symbols, identity."""

    segments: tuple[LoadSegment, ...]
    entry: int
    phdr_addr: int
    phnum: int
    phentsize: int
    syscall_entry: int
    sha256: str
    symbols: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def end(self) -> int:
        """Page-aligned end of the highest segment."""
        return page_up(max(s.vaddr + s.memsz for s in self.segments))

    def machine_segments(self) -> list[Segment]:
        """Segments as the memory map sees them."""
        return [Segment(s.vaddr, s.memsz, s.perm) for s in self.segments]

    @classmethod
    def from_file(cls, path: str) -> "GuestBinary":
        """Read and validate a guest ELF file."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_GUEST_FILE + 1)
        except OSError as e:
            raise GuestLoadError(f"cannot read guest {path!r}: {e.strerror}") from None
        try:
            return cls.from_bytes(data)
        except GuestLoadError as e:
            raise GuestLoadError(f"{path}: {e} (build guests with `snapcell guest build`)") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> "GuestBinary":
        """Validate a guest ELF held in memory."""
        if len(data) > MAX_GUEST_FILE:
            raise GuestLoadError(f"guest binary larger than {MAX_GUEST_FILE} bytes")
        if data[:4] != b"\x7fELF":
            raise GuestLoadError("guest is not an ELF file")
        try:
            return _parse(bytes(data))
        except GuestLoadError:
            raise
        except (ELFError, ValueError, KeyError, IndexError, AssertionError, OverflowError) as e:
            raise GuestLoadError(f"malformed guest ELF: {e}") from None
        except Exception as e:  # pyelftools raises construct errors of many kinds
            raise GuestLoadError(f"malformed guest ELF: {type(e).__name__}: {e}") from None


def _perm(flags: int) -> Perm:
    p = Perm.NONE
    if flags & PF_R:
        p |= Perm.R
    if flags & PF_W:
        p |= Perm.W | Perm.R
    if flags & PF_X:
        p |= Perm.X | Perm.R
    return p


_SYM = struct.Struct("<IBBHQQ")        # Elf64_Sym: name, info, other, shndx, value, size
_STT_NOTYPE, _STT_OBJECT, _STT_FUNC = 0, 1, 2


def _symbols(elf: ELFFile, data: bytes) -> dict[str, int]:
    """Name → address of the function, object and untyped symbols of .symtab, read with struct
    (pyelftools' per-symbol objects are ~10x slower on a libc-sized table)."""
    out: dict[str, int] = {}
    for sec in elf.iter_sections():
        if not isinstance(sec, SymbolTableSection) or sec["sh_entsize"] != _SYM.size:
            continue
        strtab = elf.get_section(sec["sh_link"])
        off, size = sec["sh_offset"], sec["sh_size"]
        soff, ssize = strtab["sh_offset"], strtab["sh_size"]
        if off + size > len(data) or soff + ssize > len(data):
            raise GuestLoadError("symbol table outside the file")
        names = data[soff:soff + ssize]
        table = data[off:off + size - size % _SYM.size]
        for name_off, info, _other, _shndx, value, _size in _SYM.iter_unpack(table):
            if name_off == 0 or (info & 0xF) not in (_STT_NOTYPE, _STT_OBJECT, _STT_FUNC):
                continue
            end = names.find(b"\0", name_off)
            if end < 0:
                raise GuestLoadError("symbol name outside the string table")
            name = names[name_off:end].decode("utf-8", "replace")
            out.setdefault(name, value)
    return out


def _parse(data: bytes) -> GuestBinary:
    elf = ELFFile(io.BytesIO(data))
    if elf.elfclass != 64 or not elf.little_endian:
        raise GuestLoadError("guest must be a 64-bit little-endian ELF")
    if elf["e_machine"] != "EM_X86_64":
        raise GuestLoadError(f"guest is for {elf['e_machine']}, not x86-64")
    if elf["e_type"] != "ET_EXEC":
        raise GuestLoadError("guest must be a static non-PIE executable (ET_EXEC); "
                             "build it with `snapcell guest build`")
    segments: list[LoadSegment] = []
    phoff, phnum, phentsize = elf["e_phoff"], elf["e_phnum"], elf["e_phentsize"]
    phdr_addr = None
    for i in range(phnum):
        ph = elf.get_segment(i)
        ptype = ph["p_type"]
        if ptype in ("PT_INTERP", "PT_DYNAMIC"):
            raise GuestLoadError("guest is dynamically linked; link it statically")
        if ptype != "PT_LOAD":
            continue
        vaddr, memsz, filesz, off = ph["p_vaddr"], ph["p_memsz"], ph["p_filesz"], ph["p_offset"]
        if filesz > memsz or off + filesz > len(data):
            raise GuestLoadError(f"segment {i}: file size exceeds memory size or the file")
        if memsz == 0:
            continue
        if vaddr < GUEST_BASE or vaddr + memsz > MAX_MEMORY:
            raise GuestLoadError(f"segment {i} at [{vaddr:#x}, {vaddr + memsz:#x}) outside "
                                 f"[{GUEST_BASE:#x}, {MAX_MEMORY:#x})")
        if off % PAGE != vaddr % PAGE:
            raise GuestLoadError(f"segment {i}: offset and address disagree modulo the page size")
        perm = _perm(ph["p_flags"])
        segments.append(LoadSegment(vaddr, data[off:off + filesz], memsz, perm))
        if off <= phoff and phoff + phnum * phentsize <= off + filesz:
            phdr_addr = vaddr + (phoff - off)
    if not segments:
        raise GuestLoadError("guest has no loadable segments")
    segments.sort(key=lambda s: s.vaddr)
    for a, b in zip(segments, segments[1:]):
        if a.vaddr + a.memsz > b.vaddr:
            raise GuestLoadError(f"segments at {a.vaddr:#x} and {b.vaddr:#x} overlap")
    if phdr_addr is None:
        raise GuestLoadError("program headers are not inside a loadable segment (AT_PHDR)")
    entry = elf["e_entry"]

    def executable(addr: int) -> bool:
        return any(s.vaddr <= addr < s.vaddr + s.memsz and s.perm & Perm.X for s in segments)

    if not executable(entry):
        raise GuestLoadError(f"entry point {entry:#x} is not in an executable segment")
    symbols = _symbols(elf, data)
    sys_entry = symbols.get(SYSCALL_ENTRY_SYMBOL)
    if sys_entry is None or not executable(sys_entry):
        raise GuestLoadError(f"guest lacks the SDK symbol {SYSCALL_ENTRY_SYMBOL} "
                             "(build it with `snapcell guest build`)")
    digest = hashlib.sha256(data).hexdigest()
    _remember_symbols(digest, symbols)
    return GuestBinary(tuple(segments), entry, phdr_addr, phnum, phentsize, sys_entry,
                       digest, symbols)


_KNOWN_SYMBOLS: dict[str, dict[str, int]] = {}
_KNOWN_SYMBOLS_MAX = 64


def _remember_symbols(sha256: str, symbols: dict[str, int]) -> None:
    _KNOWN_SYMBOLS.pop(sha256, None)
    _KNOWN_SYMBOLS[sha256] = symbols
    while len(_KNOWN_SYMBOLS) > _KNOWN_SYMBOLS_MAX:
        del _KNOWN_SYMBOLS[next(iter(_KNOWN_SYMBOLS))]


def known_symbols(sha256: str) -> dict[str, int] | None:
    """The symbols of a guest ELF this process has parsed (by the ELF's sha256), if any: lets a
    debugger stop at a function's entry in a sandbox made from a snapshot of that guest."""
    return _KNOWN_SYMBOLS.get(sha256)
