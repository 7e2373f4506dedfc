"""Loading a guest binary: a non-PIE x86-64 ELF built against the SDK, static, or dynamic with
musl's dynamic linker as its interpreter (the dynamic Python guest).

The ELF is untrusted input: every header field that decides where bytes go is checked. A
dynamic guest names its interpreter (PT_INTERP), but the bytes loaded are the host's: the name
must be musl's (INTERP_NAME) and the file is one the host gives (by default the one beside the
guest ELF on the host, INTERP_FILE), never anything the guest supplies. Likewise the file
system image a guest may ask for (IMAGE_SLOT): its address is the guest's, checked like a
segment's; its bytes are the host's."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import GuestLoadError
from ..machine.layout import GUEST_BASE, MAX_MEMORY, PAGE, Perm, Segment, page_up
from .abi import SYSCALL_ENTRY_SYMBOL

if TYPE_CHECKING:                     # pyelftools is imported when an ELF is parsed, not before
    from elftools.elf.elffile import ELFFile

MAX_GUEST_FILE = 256 << 20
MAX_INTERP_FILE = 4 << 20
INTERP_NAME = "/lib/ld-musl-x86_64.so.1"     # the only interpreter a dynamic guest may name
INTERP_FILE = "ld-musl-x86_64.so.1"          # the host's copy, beside the guest ELF by default
INTERP_ALIGN = 2 << 20                       # the interpreter is loaded at a 2 MiB boundary
# A guest that defines these (absolute) symbols gets the host's file system image loaded
# read-only at sc_image_slot (the dynamic Python guest: its standard library and packages);
# by default the file beside the guest ELF with the suffix .img.
IMAGE_SLOT, IMAGE_SLOT_END = "sc_image_slot", "sc_image_slot_end"
MAX_IMAGE_FILE = 448 << 20
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
    interp_base: int = 0      # where the interpreter is loaded (AT_BASE), 0 for a static guest
    interp_entry: int = 0     # the interpreter's entry point: the first instruction run

    @property
    def start(self) -> int:
        """Where the vCPU starts: the interpreter's entry for a dynamic guest, else `entry`."""
        return self.interp_entry or self.entry

    @property
    def end(self) -> int:
        """Page-aligned end of the highest segment."""
        return page_up(max(s.vaddr + s.memsz for s in self.segments))

    def machine_segments(self) -> list[Segment]:
        """Segments as the memory map sees them."""
        return [Segment(s.vaddr, s.memsz, s.perm) for s in self.segments]

    @classmethod
    def from_file(cls, path: str, interpreter: str | None = None,
                  fs_image: str | None = None) -> "GuestBinary":
        """Read and validate a guest ELF file. A dynamic guest's interpreter is read from the
        host file `interpreter` (default: INTERP_FILE in the guest ELF's directory); a guest
        with an image slot gets the file system image `fs_image` (default: the guest's path
        with the suffix .img)."""
        data = _read(path, MAX_GUEST_FILE, "guest")
        interp = image = None
        if _names_interpreter(data):
            interp = _read(interpreter or os.path.join(os.path.dirname(os.path.abspath(path)),
                                                       INTERP_FILE), MAX_INTERP_FILE,
                           "the dynamic linker (musl's libc.so, `make code-guests`) of guest")
        if IMAGE_SLOT.encode() in data:
            image = _read(fs_image or os.path.splitext(path)[0] + ".img", MAX_IMAGE_FILE,
                          "the file system image of guest")
        try:
            return cls.from_bytes(data, interp, image)
        except GuestLoadError as e:
            raise GuestLoadError(f"{path}: {e} (build guests with `snapcell guest build`)") from None

    @classmethod
    def from_bytes(cls, data: bytes, interpreter: bytes | None = None,
                   fs_image: bytes | None = None) -> "GuestBinary":
        """Validate a guest ELF held in memory (`interpreter`: the host's dynamic linker, for a
        guest that names one; `fs_image`: the file system image, for a guest with a slot)."""
        if len(data) > MAX_GUEST_FILE:
            raise GuestLoadError(f"guest binary larger than {MAX_GUEST_FILE} bytes")
        if data[:4] != b"\x7fELF":
            raise GuestLoadError("guest is not an ELF file")
        if interpreter is not None and len(interpreter) > MAX_INTERP_FILE:
            raise GuestLoadError(f"interpreter larger than {MAX_INTERP_FILE} bytes")
        if fs_image is not None and len(fs_image) > MAX_IMAGE_FILE:
            raise GuestLoadError(f"file system image larger than {MAX_IMAGE_FILE} bytes")
        from elftools.common.exceptions import ELFError
        try:
            return _parse(bytes(data), None if interpreter is None else bytes(interpreter),
                          None if fs_image is None else bytes(fs_image))
        except GuestLoadError:
            raise
        except (ELFError, ValueError, KeyError, IndexError, AssertionError, OverflowError) as e:
            raise GuestLoadError(f"malformed guest ELF: {e}") from None
        except Exception as e:  # pyelftools raises construct errors of many kinds
            raise GuestLoadError(f"malformed guest ELF: {type(e).__name__}: {e}") from None


def _read(path: str, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise GuestLoadError(f"cannot read {what} {path!r}: {e.strerror}") from None


def _names_interpreter(data: bytes) -> bool:
    """Whether an ELF's program headers include PT_INTERP (a cheap look before parsing; the
    full parse checks everything again)."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    if phentsize < 56 or phnum > 256:
        return False
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            return False
        if struct.unpack_from("<I", data, off)[0] == PT_INTERP:
            return True
    return False


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
    from elftools.elf.sections import SymbolTableSection
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


def _elf(data: bytes, what: str, etype: str) -> ELFFile:
    from elftools.elf.elffile import ELFFile
    elf = ELFFile(io.BytesIO(data))
    if elf.elfclass != 64 or not elf.little_endian:
        raise GuestLoadError(f"{what} must be a 64-bit little-endian ELF")
    if elf["e_machine"] != "EM_X86_64":
        raise GuestLoadError(f"{what} is for {elf['e_machine']}, not x86-64")
    if elf["e_type"] != etype:
        raise GuestLoadError("guest must be a non-PIE executable (ET_EXEC); build it with "
                             "`snapcell guest build`" if etype == "ET_EXEC" else
                             f"{what} must be a shared object ({etype})")
    return elf


def _load_segments(elf: ELFFile, data: bytes, base: int, what: str
                   ) -> tuple[list[LoadSegment], int | None, str | None]:
    """The PT_LOAD segments of `elf` placed at `base` (checked to lie in guest memory), the
    address of its program headers if a segment holds them, and its PT_INTERP string."""
    segments: list[LoadSegment] = []
    phoff, phnum, phentsize = elf["e_phoff"], elf["e_phnum"], elf["e_phentsize"]
    phdr_addr = interp = None
    for i in range(phnum):
        ph = elf.get_segment(i)
        ptype = ph["p_type"]
        if ptype == "PT_INTERP":
            off, size = ph["p_offset"], ph["p_filesz"]
            if size > 256 or off + size > len(data):
                raise GuestLoadError(f"{what}: malformed PT_INTERP")
            interp = data[off:off + size].split(b"\0", 1)[0].decode("utf-8", "replace")
        if ptype != "PT_LOAD":
            continue
        vaddr, memsz, filesz, off = ph["p_vaddr"], ph["p_memsz"], ph["p_filesz"], ph["p_offset"]
        if filesz > memsz or off + filesz > len(data):
            raise GuestLoadError(f"{what} segment {i}: file size exceeds memory size or the file")
        if memsz == 0:
            continue
        vaddr += base
        if vaddr < GUEST_BASE or vaddr + memsz > MAX_MEMORY:
            raise GuestLoadError(f"{what} segment {i} at [{vaddr:#x}, {vaddr + memsz:#x}) "
                                 f"outside [{GUEST_BASE:#x}, {MAX_MEMORY:#x})")
        if off % PAGE != vaddr % PAGE:
            raise GuestLoadError(f"{what} segment {i}: offset and address disagree modulo the "
                                 "page size")
        perm = _perm(ph["p_flags"])
        segments.append(LoadSegment(vaddr, data[off:off + filesz], memsz, perm))
        if off <= phoff and phoff + phnum * phentsize <= off + filesz:
            phdr_addr = vaddr + (phoff - off)
    return segments, phdr_addr, interp


def _interpreter(interp: bytes, exe_end: int) -> tuple[list[LoadSegment], int, int]:
    """The host's dynamic linker placed at the first 2 MiB boundary after the executable:
    (segments, base, entry)."""
    elf = _elf(interp, "interpreter", "ET_DYN")
    base = (exe_end + INTERP_ALIGN - 1) & ~(INTERP_ALIGN - 1)
    segments, _, nested = _load_segments(elf, interp, base, "interpreter")
    if nested is not None:
        raise GuestLoadError("interpreter names an interpreter itself")
    if not segments or segments[0].vaddr - base >= INTERP_ALIGN:
        raise GuestLoadError("interpreter has no loadable segment at its start")
    return segments, base, base + elf["e_entry"]


def _image_segment(symbols: dict[str, int], image: bytes | None) -> LoadSegment | None:
    """The host's file system image placed at the guest's slot, if the guest has one."""
    slot, slot_end = symbols.get(IMAGE_SLOT), symbols.get(IMAGE_SLOT_END)
    if slot is None:
        return None
    if slot_end is None or slot % PAGE or not GUEST_BASE <= slot < slot_end <= MAX_MEMORY:
        raise GuestLoadError(f"bad file system image slot [{slot:#x}, {slot_end or 0:#x})")
    if image is None:
        raise GuestLoadError("guest expects a file system image from the host (its "
                             f"{IMAGE_SLOT}); none was given")
    if not 0 < len(image) <= slot_end - slot:
        raise GuestLoadError(f"file system image of {len(image)} bytes does not fit the "
                             f"guest's {slot_end - slot}-byte slot")
    return LoadSegment(slot, image, page_up(len(image)), Perm.R)


def _parse(data: bytes, interp_data: bytes | None = None,
           image: bytes | None = None) -> GuestBinary:
    elf = _elf(data, "guest", "ET_EXEC")
    phnum, phentsize = elf["e_phnum"], elf["e_phentsize"]
    segments, phdr_addr, interp = _load_segments(elf, data, 0, "guest")
    if not segments:
        raise GuestLoadError("guest has no loadable segments")
    dynamic = any(elf.get_segment(i)["p_type"] == "PT_DYNAMIC" for i in range(phnum))
    interp_base = interp_entry = 0
    if interp is None and dynamic:
        raise GuestLoadError("guest is dynamically linked but names no interpreter")
    if interp is not None:
        if interp != INTERP_NAME:
            raise GuestLoadError(f"guest names the interpreter {interp!r}; only musl's "
                                 f"{INTERP_NAME} is supported (link it statically otherwise)")
        if interp_data is None:
            raise GuestLoadError(f"guest is dynamically linked: its interpreter ({INTERP_NAME}) "
                                 "must be given by the host")
        exe_end = page_up(max(s.vaddr + s.memsz for s in segments))
        more, interp_base, interp_entry = _interpreter(interp_data, exe_end)
        segments += more
    symbols = _symbols(elf, data)
    image_seg = _image_segment(symbols, image)
    if image_seg is not None:
        segments.append(image_seg)
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
    if interp_entry and not executable(interp_entry):
        raise GuestLoadError(f"interpreter entry {interp_entry:#x} is not executable")
    sys_entry = symbols.get(SYSCALL_ENTRY_SYMBOL)
    if sys_entry is None or not executable(sys_entry):
        raise GuestLoadError(f"guest lacks the SDK symbol {SYSCALL_ENTRY_SYMBOL} "
                             "(build it with `snapcell guest build`)")
    digest = hashlib.sha256(data).hexdigest()
    for extra in (interp_data if interp_base else None, image if image_seg else None):
        if extra is not None:      # the identity covers the interpreter and image too
            digest = hashlib.sha256(bytes.fromhex(digest) + hashlib.sha256(extra).digest()
                                    ).hexdigest()
    _remember_symbols(digest, symbols)
    return GuestBinary(tuple(segments), entry, phdr_addr, phnum, phentsize, sys_entry,
                       digest, symbols, interp_base, interp_entry)


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
