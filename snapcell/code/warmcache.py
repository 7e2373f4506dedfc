"""Warm snapshots on disk: the first code sandbox of a process loads its language's initialised
interpreter from a cache instead of evolving it (docs/code-sandboxes.md, "Cold starts").

An entry is an OCI image layout under `$SNAPCELL_CACHE_DIR` (default
`$XDG_CACHE_HOME/snapcell/warm`, else `~/.cache/snapcell/warm`), named by a key over everything the
warm state depends on: the guest ELF's sha256, the layout, the CPU baseline, the tool host
function's signature, the hypervisor, and the snapshot format and guest ABI of this snapcell. It
is loaded in map mode (the memory is the cached file itself, mapped copy-on-write, shared by the
page cache across processes) with `checked_load`, which verifies it like any layout (the
verified-content record vouches for blobs hashed before and unchanged since). A missing,
damaged or foreign entry is rebuilt; nothing in the cache can make a sandbox start differently
from a fresh evolve. `SNAPCELL_WARM_CACHE=0` turns the cache off.

The guest's sha256 is remembered per (path, size, mtime, inode) in `guests.json`, so a process
need not read a 60 MiB interpreter ELF to find its entry."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SnapcellError
from ..guest.abi import ABI_VERSION
from ..machine.baselines import resolve
from ..machine.features import hypervisor_name
from ..paths import cache_root, sha256_file
from ..sandbox import SandboxConfiguration, Snapshot
from ..sandbox.config import LAYOUT_FIELDS
from ..snapshot.schema import FORMAT_VERSION

CACHE_ENV, SWITCH_ENV = "SNAPCELL_CACHE_DIR", "SNAPCELL_WARM_CACHE"
TAG = "warm"
MAX_INDEX = 1 << 20


def cache_dir() -> Path | None:
    """Where warm snapshots are cached (None when the cache is turned off)."""
    if os.environ.get(SWITCH_ENV, "1") == "0":
        return None
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    return cache_root() / "warm"


def guest_sha256(path: Path, directory: Path) -> str:
    """The sha256 of the guest ELF at `path`, remembered by its file identity."""
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_dev}"
    index_path = directory / "guests.json"
    index: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        raw = index_path.read_bytes()[:MAX_INDEX]
        loaded = json.loads(raw)
        if isinstance(loaded, dict):
            index = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)}
    known = index.get(ident)
    if known is not None and len(known) == 64:
        return known
    digest = sha256_file(path)
    index[ident] = digest
    _write_atomic(index_path, json.dumps(dict(list(index.items())[-256:])).encode())
    return digest


def entry_key(guest_digest: str, config: SandboxConfiguration, tool_signature: str) -> str:
    """The cache key of a warm snapshot."""
    baseline = resolve(config.cpu_baseline) if config.cpu_baseline != "host" else None
    parts = {"guest": guest_digest, "layout": {f: getattr(config, f) for f in LAYOUT_FIELDS},
             "baseline": baseline.to_record() if baseline is not None else "host",
             "tool": tool_signature, "hypervisor": hypervisor_name(),
             "format": FORMAT_VERSION, "abi": ABI_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


def load_or_build(guest: Path, config: SandboxConfiguration, tool_signature: str,
                  build: Callable[[], Snapshot]) -> tuple[Snapshot, str]:
    """The warm snapshot from the cache, or `build()` saved into it. Returns (snapshot, how):
    how is 'disk' (loaded), 'built' (built and cached) or 'uncached' (the cache is off or
    cannot be written)."""
    directory = cache_dir()
    if directory is None:
        return build(), "uncached"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        entry = directory / entry_key(guest_sha256(guest, directory), config, tool_signature)
    except OSError:
        return build(), "uncached"
    if (entry / "index.json").is_file():
        try:
            return Snapshot.checked_load(str(entry), TAG, mode="map"), "disk"
        except SnapcellError:
            _discard(entry)                   # damaged or foreign: rebuilt below
    snap = build()
    import shutil
    import tempfile
    try:
        tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=directory))
        snap.save(str(tmp), TAG)
        try:
            os.rename(tmp, entry)             # another process may have won: keep its entry
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return snap, "built"
    except (OSError, SnapcellError):
        return snap, "uncached"
    return snap, "built"


def _discard(entry: Path) -> None:
    import shutil
    aside = entry.with_name(entry.name + f".bad-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.rename(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    import tempfile
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def describe() -> dict[str, Any]:
    """The cache's directory and entries (for `snapcell cache`-like listings and tests)."""
    directory = cache_dir()
    if directory is None or not directory.is_dir():
        return {"directory": str(directory) if directory else None, "entries": []}
    return {"directory": str(directory),
            "entries": sorted(p.name for p in directory.iterdir() if (p / "index.json").is_file())}
