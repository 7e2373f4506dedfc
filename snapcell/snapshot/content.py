"""What this process remembers about saved snapshots (never trusted across processes):

- **chains**: for an in-memory `Snapshot` object, the saved chain it is in each layout it was
  loaded from or saved to (manifest digest, layer descriptors, parent). A snapshot whose delta
  base is such a snapshot is saved as one new layer on top of that chain.
- **the image cache**: the process's own content store of composed memory images (sealed
  memfds), keyed by the chain's layer digests *and* the identity of each layer file (device,
  inode, size, mtime, ctime). A second load of an unchanged chain takes the cached image instead
  of copying again; a load of a child starts from its parent's cached image. Any change to a
  layer file changes its identity, so a modified layout never hits the cache. An entry is
  `trusted` when every layer was hashed (or vouched for by the verified-content record) when it
  was built: only trusted entries serve `checked_load`. Bounded by entries and bytes (LRU;
  `set_cache_limits`, or SNAPCELL_IMAGE_CACHE_ENTRIES / SNAPCELL_IMAGE_CACHE_BYTES)."""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from ..machine.memory import MemoryImage
from ..sandbox.snapshot import Snapshot
from .validate import Descriptor


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


# Bounds of the image cache (images counted at their full size, an upper bound of their memory):
# SNAPCELL_IMAGE_CACHE_ENTRIES / SNAPCELL_IMAGE_CACHE_BYTES, or `set_cache_limits`; 0 disables.
CACHE_ENTRIES = _env_int("SNAPCELL_IMAGE_CACHE_ENTRIES", 8)
CACHE_BYTES = _env_int("SNAPCELL_IMAGE_CACHE_BYTES", 1 << 30)
Identity = tuple[str, int, int, int, int, int]
Key = tuple[Identity, ...]
LayoutKey = tuple[int, int]


@dataclass(frozen=True)
class Chain:
    """A saved snapshot in one layout: its manifest digest, its memory layers (base first), its
    parent's manifest digest and its format version."""

    digest: str
    layers: tuple[Descriptor, ...]
    parent: str | None
    version: int


@dataclass
class _Entry:
    image: MemoryImage
    trusted: bool
    stored: int


_lock = threading.Lock()
_chains: "weakref.WeakKeyDictionary[Snapshot, dict[LayoutKey, Chain]]" = weakref.WeakKeyDictionary()
_cache: "OrderedDict[Key, _Entry]" = OrderedDict()


def layout_key(root_fd: int) -> LayoutKey:
    """A layout's identity in this process: (device, inode) of its directory."""
    st = os.fstat(root_fd)
    return (st.st_dev, st.st_ino)


def identity(digest: str, fd: int) -> Identity:
    """A layer file's identity: any write or replacement changes it."""
    st = os.fstat(fd)
    return (digest, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def remember(snapshot: Snapshot, layout: LayoutKey, chain: Chain) -> None:
    """Record that `snapshot` is `chain` in `layout`."""
    with _lock:
        _chains.setdefault(snapshot, {})[layout] = chain


def chain_of(snapshot: Snapshot | None, layout: LayoutKey) -> Chain | None:
    """The chain `snapshot` is in `layout`, if this process saved or loaded it there."""
    if snapshot is None:
        return None
    with _lock:
        return _chains.get(snapshot, {}).get(layout)


def cached(key: Key) -> tuple[MemoryImage, bool] | None:
    """(image, trusted) for a chain with exactly these layer identities, if cached."""
    with _lock:
        e = _cache.get(key)
        if e is None or e.image.fd < 0:
            return None
        _cache.move_to_end(key)
        return e.image, e.trusted


def longest_prefix(key: Key, trusted_only: bool) -> tuple[int, MemoryImage, bool] | None:
    """The longest proper prefix of `key` that is cached: (layer count, image, trusted)."""
    with _lock:
        for n in range(len(key) - 1, 0, -1):
            e = _cache.get(key[:n])
            if e is not None and e.image.fd >= 0 and (e.trusted or not trusted_only):
                _cache.move_to_end(key[:n])
                return n, e.image, e.trusted
    return None


def set_cache_limits(entries: int, max_bytes: int) -> None:
    """Bound the image cache (0 entries or bytes: no caching); evicts what no longer fits."""
    global CACHE_ENTRIES, CACHE_BYTES
    with _lock:
        CACHE_ENTRIES, CACHE_BYTES = max(0, entries), max(0, max_bytes)
        _evict()


def _evict() -> None:
    total = sum(e.stored for e in _cache.values())
    while _cache and (len(_cache) > CACHE_ENTRIES or total > CACHE_BYTES):
        _, e = _cache.popitem(last=False)
        total -= e.stored


def put(key: Key, image: MemoryImage, trusted: bool, stored: int) -> None:
    """Cache a sealed image (an existing trusted entry is never downgraded)."""
    if stored > CACHE_BYTES or CACHE_ENTRIES == 0:
        return
    with _lock:
        old = _cache.get(key)
        if old is not None and old.trusted and not trusted and old.image.fd >= 0:
            return
        _cache[key] = _Entry(image, trusted, stored)
        _cache.move_to_end(key)
        _evict()


def clear() -> None:
    """Drop every cached image (their memfds close when no snapshot uses them any more)."""
    with _lock:
        _cache.clear()
