"""Memory layers of format 2: an extent list plus the bytes it covers, so that a layer's sha256
covers only what it stores and nothing ever hashes holes (docs/snapshot-format.md).

A layer blob is

    data   the extents' bytes, concatenated in table order (each a multiple of 4096 bytes, so
           every extent starts page-aligned in the blob)
    table  n entries of two little-endian u64: image offset, length (both page multiples,
           sorted, disjoint and not adjacent, inside the image)
    footer 32 bytes: magic b"SNAPCEXT", u32 layer version (1), u32 n, u64 image size,
           u64 data bytes

The footer comes last so that a writer streams the data once, hashing as it goes, and appends the
table. Applying layers in manifest order to an all-zero image of `image size` bytes gives the
snapshot's memory: a base layer (the first) holds every non-zero page, a child layer the pages that
may differ from its parent chain.

Everything read from a blob is untrusted: `read_table` validates the footer and the table against
the blob's size before any data is touched."""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..machine.layout import PAGE
from ..machine.memory import MemoryImage
from .schema import fail

MAGIC = b"SNAPCEXT"
LAYER_VERSION = 1
FOOTER = struct.Struct("<8sIIQQ")
EXTENT = struct.Struct("<QQ")
TABLE_CAP = 16 << 20                    # at most 1 Mi extents (a 1 GiB image has 256 Ki pages)
COPY_CHUNK = 1 << 20
THREADED_HASH_MIN = 8 << 20           # layers this large hash in a helper thread
ZERO_PIECE = 64 << 10
_ZERO_PAGE = bytes(PAGE)
_ZERO_PIECE = bytes(ZERO_PIECE)
Progress = Callable[[int], None]
Extents = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class LayerTable:
    """A validated layer footer and extent table; `tail` is their exact bytes (hashed last)."""

    image_size: int
    extents: Extents
    data_bytes: int
    tail: bytes


def merge(extents: Iterable[tuple[int, int]], size: int) -> Extents:
    """Sorted, page-aligned, merged (offset, length) extents clipped to [0, size)."""
    out: list[list[int]] = []
    for off, n in sorted(extents):
        a = off - off % PAGE
        b = min(size, -(-(off + n) // PAGE) * PAGE)
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b - a) for a, b in out)


def _write_all(fd: int, data: bytes | bytearray | memoryview, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _nonzero_runs(chunk: bytes, base: int) -> list[tuple[int, int]]:
    """Page runs of `chunk` (starting at image offset `base`) that are not all zero; 64 KiB
    pieces are compared first (memcmp), pages only inside non-zero pieces."""
    runs: list[tuple[int, int]] = []
    for p in range(0, len(chunk), ZERO_PIECE):
        piece = chunk[p:p + ZERO_PIECE]
        if len(piece) == ZERO_PIECE and piece == _ZERO_PIECE:
            continue
        for q in range(0, len(piece), PAGE):
            if piece[q:q + PAGE] != _ZERO_PAGE:
                a = base + p + q
                if runs and runs[-1][0] + runs[-1][1] == a:
                    runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
                else:
                    runs.append((a, PAGE))
    return runs


WRITEBACK_EVERY = 8 << 20             # start the writeback of a large layer as it is written
_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int


def _start_writeback(fd: int, off: int, n: int) -> None:
    """Ask the kernel to start writing [off, off+n) of `fd` back now (sync_file_range
    SYNC_FILE_RANGE_WRITE: asynchronous), so that the final fsync has little left to wait for.
    Best effort: durability still comes from the fsync."""
    if _sync_file_range is not None:
        _sync_file_range(fd, off, n, _SYNC_FILE_RANGE_WRITE)


class _Hasher:
    """sha256 in a helper thread, so that hashing (hashlib releases the GIL) overlaps the
    reads and writes of a large layer; updates are applied in order."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.q: "queue.Queue[bytes | None]" = queue.Queue(maxsize=16)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="snapcell-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.q.get()) is not None:
            try:
                self.h.update(data)
            except BaseException as e:      # pragma: no cover - hashlib does not fail
                self.error = e

    def update(self, data: bytes) -> None:
        """Queue bytes to hash."""
        self.q.put(data)

    def hexdigest(self) -> str:
        """Wait for the queued bytes and return the hex digest."""
        self.close()
        if self.error is not None:
            raise self.error
        return self.h.hexdigest()

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()


def _changed_runs(chunk: bytes, old: bytes, base: int) -> list[tuple[int, int]]:
    """Page runs of `chunk` (at image offset `base`) that differ from `old` (the same range of
    the parent image)."""
    runs: list[tuple[int, int]] = []
    for q in range(0, len(chunk), PAGE):
        if chunk[q:q + PAGE] != old[q:q + PAGE]:
            a = base + q
            if runs and runs[-1][0] + runs[-1][1] == a:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
            else:
                runs.append((a, PAGE))
    return runs


def write_layer(image: MemoryImage, extents: Extents | None, out_fd: int,
                progress: Progress | None = None,
                parent: MemoryImage | None = None) -> tuple[str, int, Extents]:
    """Write a layer of `image` to `out_fd`: with `extents` None a base layer (every non-zero
    page of the image's data extents), else the pages of those extents (a child layer: the pages
    that may differ from the parent, zeros included) — only those that really differ from
    `parent` when the parent image is given. Returns (sha256 digest, blob size, extents stored).
    The data is read once, hashed and written as it goes."""
    source = image.data_extents() if extents is None else extents
    big = sum(n for _, n in source) >= THREADED_HASH_MIN
    h: Any = _Hasher() if big else hashlib.sha256()
    try:
        return _write_layer(image, source, extents is None, out_fd, progress, parent, h)
    finally:
        if big:
            h.close()


def _write_layer(image: MemoryImage, source: Iterable[tuple[int, int]], base_layer: bool,
                 out_fd: int, progress: Progress | None, parent: MemoryImage | None,
                 h: Any) -> tuple[str, int, Extents]:
    stored: list[tuple[int, int]] = []
    pos = flushed = 0
    for start, length in source:
        off, end = start, start + length
        while off < end:
            want = min(COPY_CHUNK, end - off)
            chunk = image.read(off, want)
            if base_layer:
                runs = _nonzero_runs(chunk, off)
            elif parent is not None:
                runs = _changed_runs(chunk, parent.read(off, want), off)
            else:
                runs = [(off, want)]
            for a, n in runs:
                piece = chunk if n == want else chunk[a - off:a - off + n]
                h.update(piece)
                _write_all(out_fd, piece, pos)
                pos += n
                if stored and stored[-1][0] + stored[-1][1] == a:
                    stored[-1] = (stored[-1][0], stored[-1][1] + n)
                else:
                    stored.append((a, n))
            off += want
            if pos - flushed >= WRITEBACK_EVERY:
                _start_writeback(out_fd, flushed, pos - flushed)
                flushed = pos
            if progress is not None:
                progress(want)
    tail = b"".join(EXTENT.pack(a, n) for a, n in stored)
    tail += FOOTER.pack(MAGIC, LAYER_VERSION, len(stored), image.size, pos)
    h.update(tail)
    _write_all(out_fd, tail, pos)
    return "sha256:" + h.hexdigest(), pos + len(tail), tuple(stored)


def parse_table(tail: bytes, blob_size: int, image_size: int, what: str) -> LayerTable:
    """Validate a layer's footer and table (`tail`: the last bytes of the blob, table + footer)
    against the blob's size and the snapshot's image size."""
    if len(tail) < FOOTER.size:
        raise fail(f"{what} is too small for a layer footer")
    magic, version, n, size, data = FOOTER.unpack_from(tail, len(tail) - FOOTER.size)
    if magic != MAGIC:
        raise fail(f"{what} is not a snapcell memory layer (bad magic)")
    if version != LAYER_VERSION:
        raise fail(f"{what} has layer version {version}; this snapcell reads version "
                   f"{LAYER_VERSION} (a newer snapcell wrote it?)")
    if size != image_size:
        raise fail(f"{what} is for a {size}-byte image, the snapshot's memory is {image_size}")
    table_bytes = n * EXTENT.size
    if table_bytes + FOOTER.size > TABLE_CAP or data + table_bytes + FOOTER.size != blob_size:
        raise fail(f"{what}: {n} extents and {data} data bytes do not add up to the blob's "
                   f"{blob_size} bytes")
    if len(tail) != table_bytes + FOOTER.size:
        raise fail(f"{what}: extent table truncated")
    extents: list[tuple[int, int]] = []
    end, total = -1, 0
    for i in range(n):
        off, length = EXTENT.unpack_from(tail, i * EXTENT.size)
        if off % PAGE or length % PAGE or length == 0:
            raise fail(f"{what}: extent {i} ({off:#x}, {length:#x}) is not page-aligned")
        if off <= end:
            raise fail(f"{what}: extent {i} at {off:#x} overlaps, touches or precedes the previous "
                       "one (extents must be sorted, disjoint and merged)")
        if off + length > image_size:
            raise fail(f"{what}: extent {i} ends at {off + length:#x}, beyond the image")
        extents.append((off, length))
        end, total = off + length, total + length
    if total != data:
        raise fail(f"{what}: extents cover {total} bytes, the footer says {data}")
    return LayerTable(image_size, tuple(extents), data, bytes(tail))


def read_table(fd: int, blob_size: int, image_size: int, what: str) -> LayerTable:
    """Read and validate the table of the layer blob open at `fd` (its size already checked)."""
    if blob_size < FOOTER.size:
        raise fail(f"{what} is too small for a layer footer")
    footer = os.pread(fd, FOOTER.size, blob_size - FOOTER.size)
    if len(footer) != FOOTER.size:
        raise fail(f"{what} ended early")
    n = FOOTER.unpack(footer)[2] if footer[:8] == MAGIC else 0
    table_bytes = n * EXTENT.size
    if table_bytes + FOOTER.size > min(blob_size, TABLE_CAP):
        return parse_table(footer, blob_size, image_size, what)     # raises the size error
    tail = os.pread(fd, table_bytes + FOOTER.size, blob_size - table_bytes - FOOTER.size)
    return parse_table(tail, blob_size, image_size, what)


def apply_layer(fd: int, table: LayerTable, image: MemoryImage, *, first: bool, verify: bool,
                progress: Progress | None = None) -> str | None:
    """Copy a layer's data from `fd` into the (unsealed) `image`, every stored byte (a base
    layer stores no zero pages, and a child's zeros override its parent's data; `first` is
    accepted for callers that know the image is fresh). With `verify`, returns the sha256 of
    exactly the bytes copied plus the table: what is checked is what the image holds."""
    h: Any = hashlib.sha256() if verify else None
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    pos = 0
    for off, length in table.extents:
        done = 0
        while done < length:
            want = min(COPY_CHUNK, length - done)
            n = os.preadv(fd, [view[:want]], pos)
            if n != want:
                raise fail(f"memory layer ended at byte {pos + max(n, 0)}; its table says "
                           f"{table.data_bytes + len(table.tail)}")
            if h is not None:
                h.update(view[:n])
            _write_all(image.fd, view[:n], off + done)
            pos += n
            done += n
            if progress is not None:
                progress(n)
    if h is None:
        return None
    h.update(table.tail)
    return "sha256:" + str(h.hexdigest())


def stored_bytes(table: LayerTable) -> int:
    """Bytes of guest memory a layer stores."""
    return table.data_bytes
