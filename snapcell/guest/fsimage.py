"""Read-only file system images for the SDK's in-guest file layer (snapcell/guest/sdk/fs.c).

An image is a sorted table of absolute paths (directories and regular files) with each
directory's children listed in name order, followed by the file contents. The guest links it
into its ELF and mounts it with `sc_fs_mount`; the layout is documented at the top of fs.c and
in docs/code-sandboxes.md. This module writes images (`build_image`) and reads them back
(`read_image`, used by the tests and `snapcell guest` tooling). It depends on the standard
library only, so build scripts can load it with any Python 3.11."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

MAGIC = b"SCFSIMG1"
VERSION = 1
HEADER = struct.Struct("<8sIIQQQQQ")       # magic, version, count, table, children, strings, data, total
ENTRY = struct.Struct("<IIIIQQ")           # path_off, path_len, parent, mode, a, b
S_IFDIR, S_IFREG = 0o040000, 0o100000
DIR_MODE, FILE_MODE = S_IFDIR | 0o555, S_IFREG | 0o444
PATH_MAX = 255                             # bytes, without the NUL (SC_FS_PATH_MAX - 1)
DATA_ALIGN = 16


class ImageError(ValueError):
    """A path set that cannot become an image, or bytes that are not a valid image."""


@dataclass(frozen=True)
class Entry:
    """One image entry as read back: its path, whether it is a directory, its children's names
    (directories) or contents (files)."""

    path: str
    is_dir: bool
    children: tuple[str, ...] = ()
    data: bytes = b""


def _check_path(path: str) -> str:
    if not path.startswith("/") or path != "/" and path.endswith("/"):
        raise ImageError(f"image path {path!r} must be absolute with no trailing '/'")
    parts = path.split("/")[1:]
    if path != "/" and any(p in ("", ".", "..") for p in parts):
        raise ImageError(f"image path {path!r} is not normalised")
    if "\0" in path or len(path.encode()) > PATH_MAX:
        raise ImageError(f"image path {path!r} is too long or holds a NUL")
    return path


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def build_image(files: Mapping[str, bytes], dirs: tuple[str, ...] = ("/tmp",)) -> bytes:
    """An image holding `files` (absolute path → contents), every directory on their paths, and
    the extra (empty) directories `dirs` — /tmp, where the guest's scratch area is mounted,
    by default."""
    kinds: dict[bytes, bytes | None] = {b"/": None}
    for d in dirs:
        p = _check_path(d)
        while p != "/":
            kinds[p.encode()] = None
            p = _parent(p)
    for path, data in files.items():
        _check_path(path)
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"contents of {path!r} must be bytes")
        key = path.encode()
        if key in kinds:
            raise ImageError(f"{path!r} is both a file and a directory")
        kinds[key] = bytes(data)
        p = _parent(path)
        while True:
            if kinds.get(p.encode(), None) is not None:
                raise ImageError(f"{p!r} is both a file and a directory")
            kinds[p.encode()] = None
            if p == "/":
                break
            p = _parent(p)
    paths = sorted(kinds)
    index = {k: i for i, k in enumerate(paths)}
    children: dict[bytes, list[bytes]] = {k: [] for k in paths if kinds[k] is None}
    for k in paths[1:]:
        children[k.rsplit(b"/", 1)[0] or b"/"].append(k)
    strings = b"".join(paths)
    count = len(paths)
    table_off = HEADER.size
    children_off = table_off + count * ENTRY.size
    child_list: list[int] = []
    child_start: dict[bytes, int] = {}
    for k in paths:
        if kinds[k] is None:
            child_start[k] = len(child_list)
            kids = sorted(children[k], key=lambda c: c.rsplit(b"/", 1)[1])
            child_list.extend(index[c] for c in kids)
    strings_off = children_off + 4 * len(child_list)
    data_off = -(-(strings_off + len(strings)) // DATA_ALIGN) * DATA_ALIGN
    blobs = bytearray()
    table = bytearray()
    pos = 0
    for k in paths:
        parent_index = index[k.rsplit(b"/", 1)[0] or b"/"] if k != b"/" else 0
        contents = kinds[k]
        if contents is None:
            table += ENTRY.pack(pos, len(k), parent_index, DIR_MODE, child_start[k], len(children[k]))
        else:
            table += ENTRY.pack(pos, len(k), parent_index, FILE_MODE, data_off + len(blobs),
                                len(contents))
            blobs += contents
            blobs += b"\0" * (-len(blobs) % DATA_ALIGN)
        pos += len(k)
    total = data_off + len(blobs)
    out = bytearray(HEADER.pack(MAGIC, VERSION, count, table_off, children_off, strings_off,
                                data_off, total))
    out += table
    out += struct.pack(f"<{len(child_list)}I", *child_list)
    out += strings
    out += b"\0" * (data_off - len(out))
    out += blobs
    assert len(out) == total
    return bytes(out)


def read_image(image: bytes) -> dict[str, Entry]:
    """Parse and validate an image (the same checks as the guest's `sc_fs_mount`)."""
    if len(image) < HEADER.size:
        raise ImageError("image shorter than its header")
    magic, version, count, toff, coff, soff, doff, total = HEADER.unpack_from(image)
    if magic != MAGIC or version != VERSION:
        raise ImageError("not a snapcell file system image (magic/version)")
    if total != len(image) or count == 0 or toff != HEADER.size or coff != toff + count * ENTRY.size \
            or not coff <= soff <= doff <= total:
        raise ImageError("image sections are inconsistent")
    nchildren = (soff - coff) // 4
    kids = struct.unpack_from(f"<{nchildren}I", image, coff)
    raw = []
    for i in range(count):
        po, pl, parent, mode, a, b = ENTRY.unpack_from(image, toff + i * ENTRY.size)
        if not 0 < pl <= PATH_MAX or po + pl > doff - soff or parent >= count:
            raise ImageError(f"entry {i}: bad path or parent")
        raw.append((image[soff + po:soff + po + pl], parent, mode, a, b))
    paths = [r[0] for r in raw]
    if paths != sorted(set(paths)) or paths[0] != b"/":
        raise ImageError("image paths are not sorted and unique, or there is no root")
    out: dict[str, Entry] = {}
    for path, _parent_i, mode, a, b in raw:
        name = path.decode()
        if mode & 0o170000 == S_IFDIR:
            if a + b > nchildren or any(k >= count for k in kids[a:a + b]):
                raise ImageError(f"{name}: bad children")
            names = tuple(paths[k].rsplit(b"/", 1)[1].decode() for k in kids[a:a + b])
            out[name] = Entry(name, True, children=names)
        elif mode & 0o170000 == S_IFREG:
            if a < doff or a + b > total:
                raise ImageError(f"{name}: data outside the image")
            out[name] = Entry(name, False, data=bytes(image[a:a + b]))
        else:
            raise ImageError(f"{name}: neither a file nor a directory")
    return out
