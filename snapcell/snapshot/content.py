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
  `set_cache_limits`, or SNAPCELL_IMAGE_CACHE_ENTRIES / SNAPCELL_IMAGE_CACHE_BYTES).
  Images that map snapshot files (copy-on-write loads, `mode="map"`, and their descendants) are
  kept apart from private ones: a copy-mode load is only ever served a private image (which
  nothing done to the files can reach); a map-mode load may be served either."""

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
_Slot = tuple[bool, Key]              # (maps files, chain key)
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
_cache: "OrderedDict[_Slot, _Entry]" = OrderedDict()


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


def _slots(key: Key, mapped: bool) -> tuple[_Slot, ...]:
    """Where to look for `key`: the private image first, then (when allowed) a mapped one."""
    return ((False, key), (True, key)) if mapped else ((False, key),)


def cached(key: Key, mapped: bool = False, trusted_only: bool = False
           ) -> tuple[MemoryImage, bool] | None:
    """(image, trusted) for a chain with exactly these layer identities, if cached: a private
    image, or with `mapped` also one that maps the layer files (a private one first);
    `trusted_only` skips untrusted entries."""
    with _lock:
        for slot in _slots(key, mapped):
            e = _cache.get(slot)
            if e is not None and not e.image.closed and (e.trusted or not trusted_only):
                _cache.move_to_end(slot)
                return e.image, e.trusted
    return None


def holds_trusted(key: Key, image: MemoryImage) -> bool:
    """Whether `image` itself is cached, trusted, as the chain `key` (private or mapped)."""
    with _lock:
        return any(e is not None and e.image is image and e.trusted
                   for e in (_cache.get(slot) for slot in _slots(key, True)))


def longest_prefix(key: Key, trusted_only: bool, mapped: bool = False
                   ) -> tuple[int, MemoryImage, bool] | None:
    """The longest proper prefix of `key` that is cached: (layer count, image, trusted); with
    `mapped` an image mapping the files may serve."""
    with _lock:
        for n in range(len(key) - 1, 0, -1):
            for slot in _slots(key[:n], mapped):
                e = _cache.get(slot)
                if e is not None and not e.image.closed and (e.trusted or not trusted_only):
                    _cache.move_to_end(slot)
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
    """Cache a sealed image (an existing trusted entry is never downgraded), as a private or a
    mapped entry according to what the image is made of."""
    if stored > CACHE_BYTES or CACHE_ENTRIES == 0:
        return
    slot = (image.maps_files, key)
    with _lock:
        old = _cache.get(slot)
        if old is not None and old.trusted and not trusted and not old.image.closed:
            return
        _cache[slot] = _Entry(image, trusted, stored)
        _cache.move_to_end(slot)
        _evict()


def clear() -> None:
    """Drop every cached image (their memfds close when no snapshot uses them any more)."""
    with _lock:
        _cache.clear()
