"""`SnapshotCache`: one worker's snapshots, pulled from the registry by digest into its cache
directory (or read from a layout directory), verified once with `Snapshot.checked_load` and then
served from memory to every pool of the worker."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import SnapcellError, SnapshotFormatError, SnapshotReferenceError
from ..sandbox import Snapshot
from .refs import SnapshotRef


@dataclass
class CacheStats:
    """What a cache did: snapshots pulled from a registry, verified (checked_load), refused
    (verification failed: remembered, never retried), and the seconds spent pulling+verifying."""

    pulled: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class SnapshotCache:
    """Snapshots by reference, each fetched and verified at most once per process.

    Registry references are pulled into ``<directory>/sha256-<hex>/`` (an OCI layout; a copy
    left there by an earlier process is re-verified, not re-downloaded). A snapshot that fails
    verification — a digest mismatch in the pull or in `checked_load`, a malformed config — is
    remembered as refused: later requests get the same error and nothing ever runs from it.
    Transient failures (registry unreachable) are not remembered. `registry` holds the options
    of `Snapshot.pull` (insecure, ca_file, username, password, timeout)."""

    def __init__(self, directory: str | os.PathLike[str], **registry: Any) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.registry = registry
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._refused: dict[str, SnapcellError] = {}
        self.stats = CacheStats()

    def get(self, ref: SnapshotRef) -> Snapshot:
        """The verified snapshot `ref` names (fetched on first use; concurrent first uses of
        the same snapshot wait for one fetch)."""
        key = ref.key
        snap = self._snapshots.get(key)
        if snap is not None:
            return snap
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            snap = self._snapshots.get(key)
            if snap is not None:
                return snap
            refused = self._refused.get(key)
            if refused is not None:
                raise refused
            start = time.monotonic()
            try:
                snap = self._fetch(ref)
            except (SnapshotFormatError, SnapshotReferenceError) as e:
                self._refused[key] = e
                self.stats.refused.append(key)
                raise
            self.stats.seconds[key] = time.monotonic() - start
            self.stats.verified.append(key)
            self._snapshots[key] = snap
            return snap

    def _fetch(self, ref: SnapshotRef) -> Snapshot:
        if ref.kind == "layout":
            return Snapshot.checked_load(ref.location, ref.ref)
        target = os.path.join(self.directory, ref.ref.replace(":", "-"))
        if not _has_digest(target, ref.ref):
            os.makedirs(self.directory, exist_ok=True)
            Snapshot.pull(ref.location, target, **self.registry)
            self.stats.pulled.append(ref.ref)
        return Snapshot.checked_load(target, ref.ref)

    def forget(self) -> None:
        """Drop the in-memory snapshots and refusals (files in the directory stay)."""
        with self._lock:
            self._snapshots.clear()
            self._refused.clear()


def _has_digest(layout: str, digest: str) -> bool:
    """Whether `layout`'s index.json lists `digest` (a cheap check; the load verifies)."""
    try:
        with open(os.path.join(layout, "index.json"), "rb") as f:
            return digest.encode() in f.read(1 << 20)
    except OSError:
        return False
