"""Code contexts: one REPL per conversation, that outlives the process running it.

A `ContextStore` is a directory shared by every process (every replica of `snapcell serve`)
that serves contexts from it:

- ``layout/`` — an OCI image layout with each language's warm interpreter image (tag
  ``base-<lang>-<guest sha256 prefix>``), saved there once.
- ``shards/<nn>/`` — SHARDS OCI layouts (a context's is chosen by its id), each with its own
  copy of the interpreter images and the checkpoints of its contexts: every context as **one
  diff layer** on its interpreter image (tag ``<context id>.v<version>``). A checkpoint
  rewrites the context's layer against that image (never a chain of layers), so a context
  costs its changed pages whatever its history (~1 MiB for a small conversation); sharding
  keeps each layout's index small (saves and loads parse it).
- ``images/<digest prefix>/`` — a package image a Python context runs on (saved once) and the
  checkpoints of its contexts, one diff layer each on it.
- ``contexts/<tenant hash>/<id>.json`` — the context's record: tenant, language, image, layout,
  the manifest digest of its last checkpoint, its version (one more per checkpoint), bytes on
  disk, last use. Written atomically after the snapshot, so a record always names a complete
  checkpoint; `collect` drops the tags of superseded checkpoints and the blobs nothing needs.
- ``locks/<id>.lock`` — the context's hand-over lock (`CodeContext.hold`): one process holds a
  context from a run until that run's checkpoint, so no two run it at once.

`CodeContext.run` keeps state across runs (`CodeSandbox(keep_state=True)`); `checkpoint()`
saves it to the store; `pause()` checkpoints and releases the micro-VM; any process resumes a
paused context with `ContextStore.open(id, tenant)`: a micro-VM on the interpreter image with
the checkpoint's pages read into it. A live context notices a newer checkpoint written by
another process (its record's version) and resumes from it before its next run. What a crash
loses: the runs after the context's last checkpoint (docs/serving.md)."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    ArgumentError,
    SessionNotFound,
    SnapcellError,
)
from ..sandbox import Snapshot
from ..sandbox.snapshot import MemoryDelta
from ..snapshot import collect, layers, oci
from ..snapshot.files import Reader
from ..snapshot.schema import MAX_LAYERS
from ..snapshot.validate import resolve
from .context_images import ContextImages
from .languages import language
from .protocol import check_files
from .result import RunResult
from .streaming import StreamingCodeSandbox

MIB = 1 << 20
CONTEXT_ID = re.compile(r"ctx_[0-9a-f]{24}\Z")
_TAG = re.compile(r"(ctx_[0-9a-f]{24})\.v([0-9]{1,12})\Z")
_BASE_TAG = "base-{lang}-{sha}"


class ContextNotFound(SessionNotFound):
    """No such context (or it belongs to another tenant)."""


class ContextBusy(SnapcellError):
    """Another process (or `CodeContext` object) holds the context: it has runs not yet
    checkpointed, or one in progress."""


class ContextLimitExceeded(SnapcellError):
    """A tenant's limit on contexts or bytes on disk would be exceeded."""


@dataclass(frozen=True)
class ContextLimits:
    """Per-tenant limits of a store: contexts, bytes of their layers on disk, and how long an
    unused context is kept (None: forever)."""

    max_contexts: int = 32
    max_bytes: int = 256 * MIB
    idle_expiry: float | None = 7 * 24 * 3600.0


@dataclass
class ContextRecord:
    """What the store keeps about a context (``contexts/<tenant hash>/<id>.json``)."""

    id: str
    tenant: str
    lang: str
    created: float
    used: float
    version: int = 0
    digest: str | None = None        # manifest of the last checkpoint (None: the base itself)
    base: str = ""                   # manifest digest of the interpreter image
    bytes: int = 0                   # the checkpoint's own layer on disk
    layout: str = ""                 # the shard holding its checkpoints (relative to the store)
    image: str | None = None         # a package image's reference (None: the language's own)
    image_name: str | None = None    # ...as shown to its tenant

    def describe(self) -> dict[str, Any]:
        """The JSON view (no tenant, no image reference)."""
        return {"id": self.id, "lang": self.lang, "image": self.image_name,
                "created": self.created, "used": self.used, "version": self.version,
                "bytes": self.bytes}


class ContextStore:
    """Contexts in `directory` (created if missing), shared by every process using it, with
    per-tenant `limits`."""

    def __init__(self, directory: str | os.PathLike[str],
                 limits: ContextLimits = ContextLimits()) -> None:
        self.root = Path(directory)
        self.records = self.root / "contexts"
        self.records.mkdir(parents=True, exist_ok=True)
        self.locks = self.root / "locks"
        self.locks.mkdir(exist_ok=True)
        self.limits = limits
        self.images = ContextImages(self.root)
        self._garbage: dict[str, int] = {}   # shard → superseded checkpoints and deletions

    def base_for(self, lang: str) -> tuple[str, Snapshot]:
        """(manifest digest, snapshot) of `lang`'s interpreter image in the store."""
        return self.images.base_for(lang)

    def base_of(self, rec: ContextRecord) -> Snapshot:
        """The interpreter image context `rec`'s checkpoints are diffs on."""
        return self.images.base(rec.layout, rec.base, rec.image)

    def shards(self) -> list[str]:
        """Every layout holding checkpoints (relative to the store): the shards, and the
        package images' layouts."""
        return sorted(str(p.relative_to(self.root))
                      for p in [*self.root.glob("shards/*"), *self.root.glob("images/*")]
                      if (p / "oci-layout").is_file())

    # ---------------------------------------------------------------- records
    def _dir(self, tenant: str) -> Path:
        """The directory of a tenant's records (named by a hash: any tenant name is safe)."""
        return self.records / hashlib.sha256(tenant.encode()).hexdigest()[:24]

    def _path(self, cid: str, tenant: str) -> Path:
        return self._dir(tenant) / f"{cid}.json"

    @staticmethod
    def _read(paths: Iterable[Path]) -> list[ContextRecord]:
        """The records of `paths` that read and parse (others are being written or deleted)."""
        out = []
        for p in paths:
            try:
                out.append(ContextRecord(**json.loads(p.read_bytes())))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def all_records(self) -> list[ContextRecord]:
        """The records of every tenant's contexts."""
        return self._read(self.records.glob("*/ctx_*.json"))

    def record(self, cid: str, tenant: str) -> ContextRecord:
        """The record of context `cid` of `tenant`; ContextNotFound otherwise."""
        if not isinstance(cid, str) or not CONTEXT_ID.match(cid):
            raise ContextNotFound(f"no context {str(cid)[:80]!r}")
        try:
            data = json.loads(self._path(cid, tenant).read_bytes())
            rec = ContextRecord(**data)
        except (OSError, ValueError, TypeError):
            raise ContextNotFound(f"no context {cid!r}") from None
        if rec.tenant != tenant:
            raise ContextNotFound(f"no context {cid!r}")
        return rec

    def _write(self, rec: ContextRecord) -> None:
        d = self._dir(rec.tenant)
        d.mkdir(exist_ok=True)
        tmp = d / f".{rec.id}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(rec)))
        os.replace(tmp, self._path(rec.id, rec.tenant))

    def of_tenant(self, tenant: str) -> list[ContextRecord]:
        """The records of `tenant`'s contexts."""
        return sorted((r for r in self._read(self._dir(tenant).glob("ctx_*.json"))
                       if r.tenant == tenant), key=lambda r: r.created)

    def usage(self, tenant: str) -> tuple[int, int]:
        """(contexts, bytes on disk) of `tenant`."""
        recs = self.of_tenant(tenant)
        return len(recs), sum(r.bytes for r in recs)

    def _check_room(self, tenant: str, extra_bytes: int = 0) -> None:
        n, used = self.usage(tenant)
        if n >= self.limits.max_contexts:
            raise ContextLimitExceeded(f"tenant has {n} contexts, the most allowed is "
                                       f"{self.limits.max_contexts}; delete some first")
        if used + extra_bytes > self.limits.max_bytes:
            raise ContextLimitExceeded(f"tenant's contexts take {used} bytes on disk, the most "
                                       f"allowed is {self.limits.max_bytes}")

    # ---------------------------------------------------------------- contexts
    def create(self, lang: str, tenant: str = "default", *, image: str | None = None,
               image_name: str | None = None, timeout: float | None = 5.0) -> "CodeContext":
        """A new context of `lang` (a fresh interpreter) for `tenant`; Python contexts may run
        on a package `image` (`LAYOUT:TAG` or a registry reference pinned by digest, as
        `CodeSandbox(image=...)`; `image_name` is how `describe` shows it, default `image`)."""
        spec = language(lang)
        if image is not None and spec.name != "python":
            raise ArgumentError(f"image is for Python contexts, not {spec.display}")
        self._check_room(tenant)
        now = time.time()
        cid = "ctx_" + secrets.token_hex(12)
        shard, base = (self.images.image_layout(image) if image is not None
                       else self.images.shard_for(cid, spec.name))
        rec = ContextRecord(id=cid, tenant=tenant, lang=spec.name, created=now, used=now,
                            base=base, layout=shard, image=image,
                            image_name=(image_name or image) if image is not None else None)
        self._write(rec)
        return CodeContext(self, rec, timeout=timeout)

    def open(self, cid: str, tenant: str = "default", *,
             timeout: float | None = 5.0) -> "CodeContext":
        """Context `cid` of `tenant`, resumed from its last checkpoint (ContextNotFound for
        unknown ids and other tenants' ones)."""
        return CodeContext(self, self.record(cid, tenant), timeout=timeout)

    def delete(self, cid: str, tenant: str = "default") -> None:
        """Forget context `cid` (its layer goes at the next `collect`)."""
        rec = self.record(cid, tenant)
        try:
            self._path(cid, tenant).unlink()
        except FileNotFoundError:
            raise ContextNotFound(f"no context {cid!r}") from None
        (self.locks / f"{cid}.lock").unlink(missing_ok=True)    # (a holder's checkpoint fails)
        self._untag(rec.layout, _tag(cid, rec.version))

    def expire(self, now: float | None = None) -> list[str]:
        """Delete every context unused for longer than the idle expiry; their ids."""
        if self.limits.idle_expiry is None:
            return []
        now = time.time() if now is None else now
        gone = []
        for rec in self.all_records():
            if now - rec.used > self.limits.idle_expiry:
                try:
                    self.delete(rec.id, rec.tenant)
                except ContextNotFound:
                    continue
                gone.append(rec.id)
        return gone

    def collect(self, min_garbage: int = 1) -> None:
        """Drop the tags of superseded checkpoints and delete the layout's blobs no context or
        base needs any more, once at least `min_garbage` checkpoints or deletions of this
        store left some."""
        if sum(self._garbage.values()) < min_garbage:
            return
        shards, self._garbage = self._garbage, {}
        stale = self.stale_tags()
        for shard in sorted(shards):
            tags = stale.get(shard, [])
            if tags:
                collect.rm(str(self.root / shard), tags, collect=True)
            else:
                collect.gc(str(self.root / shard))

    def _save(self, rec: ContextRecord, snap: Snapshot, extents: tuple[tuple[int, int], ...],
              base: Snapshot) -> None:
        """Save `snap` as one layer on `base` (the pages in `extents` that differ from it) and
        then its record."""
        rebased = dataclasses.replace(snap, digest=None,
                                      delta=MemoryDelta(weakref.ref(base), extents))
        _, used = self.usage(rec.tenant)
        new_tag = _tag(rec.id, rec.version + 1)
        layout = str(self.root / rec.layout)
        digest = rebased.save(layout, new_tag, max_depth=MAX_LAYERS)
        size = _top_layer_size(layout, digest)
        if used - rec.bytes + size > self.limits.max_bytes:
            self._untag(rec.layout, new_tag)
            raise ContextLimitExceeded(
                f"the checkpoint would take the tenant's contexts to {used - rec.bytes + size} "
                f"bytes on disk, the most allowed is {self.limits.max_bytes}")
        if not self._path(rec.id, rec.tenant).exists():     # deleted meanwhile (elsewhere)
            self._untag(rec.layout, new_tag)
            raise ContextNotFound(f"no context {rec.id!r}")
        rec.digest, rec.bytes = digest, size
        rec.version += 1
        rec.used = time.time()
        self._write(rec)
        # (the old tag: `collect` removes it with its layer)
        self._garbage[rec.layout] = self._garbage.get(rec.layout, 0) + 1

    def _untag(self, shard: str, tag: str) -> None:
        try:
            collect.rm(str(self.root / shard), [tag])
        except SnapcellError:
            return
        self._garbage[shard] = self._garbage.get(shard, 0) + 1

    def stale_tags(self) -> dict[str, list[str]]:
        """Shard → tags of checkpoints no record names any more: older versions of a
        context, and every version of a deleted one."""
        versions = {rec.id: rec.version for rec in self.all_records()}
        unreadable = {p.stem for p in self.records.glob("*/ctx_*.json")} - set(versions)
        out: dict[str, list[str]] = {}
        for shard in self.shards():
            for tag, _digest in oci.entries(str(self.root / shard)):
                m = _TAG.match(tag or "")
                if m is None or m.group(1) in unreadable:     # (unreadable record: keep all)
                    continue
                current = versions.get(m.group(1))
                if current is None or int(m.group(2)) < current:
                    out.setdefault(shard, []).append(str(tag))
        return out


def _tag(cid: str, version: int) -> str:
    """The layout tag of checkpoint `version` of a context (each checkpoint gets its own, so a
    record always names a tagged, complete checkpoint)."""
    return f"{cid}.v{version}"


def _top_layer_size(layout: str, digest: str) -> int:
    with Reader(layout) as r:
        e = r.entry(resolve(r.entries, digest))
        return int(e.manifest.layers[-1].size) if len(e.manifest.layers) > 1 else 0


class CodeContext:
    """A stateful code sandbox kept in a `ContextStore` (see the module's docstring). Use it
    from one thread at a time (the service serialises each context's requests)."""

    def __init__(self, store: ContextStore, rec: ContextRecord, *,
                 timeout: float | None = 5.0, lock_wait: float = 10.0) -> None:
        self.store, self.rec, self.timeout = store, rec, timeout
        self.lock_wait = lock_wait
        self._held: int | None = None      # the descriptor holding the context's file lock
        self.resumes = 0                   # micro-VMs started from a checkpoint (metrics)
        self.resume_seconds = 0.0          # ...the last one's time
        self._box: StreamingCodeSandbox | None = None
        self._extents: tuple[tuple[int, int], ...] = ()   # of the loaded checkpoint vs base
        self._loaded = -1                                 # version the box holds
        self._dirty = False
        self.lock = threading.Lock()

    @property
    def id(self) -> str:
        """The context's id."""
        return self.rec.id

    @property
    def lang(self) -> str:
        """The context's language."""
        return self.rec.lang

    @property
    def live(self) -> bool:
        """Whether the context holds a micro-VM now (else it is paused in the store)."""
        return self._box is not None

    def describe(self) -> dict[str, Any]:
        """The JSON view of the context."""
        return {**self.rec.describe(), "state": "live" if self.live else "paused"}

    # ---------------------------------------------------------------- hand-over
    # One holder at a time, across processes: an exclusive flock on ``locks/<id>.lock``, taken
    # before a run (or a fork or reset) and kept while the context has runs not checkpointed.
    # A checkpoint, pause or close hands it over; the next holder resumes the checkpoint (its
    # record is the newest: the previous holder wrote it before letting go). A holder that
    # dies lets go with its descriptors.
    @property
    def held(self) -> bool:
        """Whether this object holds the context (runs here; no other may)."""
        return self._held is not None

    def try_hold(self) -> bool:
        """Take the context if no other process or object holds it; whether this one does."""
        if self._held is not None:
            return True
        fd = os.open(self.store.locks / f"{self.rec.id}.lock",
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._held = fd
        return True

    def hold(self, wait: float | None = None) -> None:
        """Take the context, waiting up to `wait` seconds (default `lock_wait`) for its holder
        to hand it over; ContextBusy after that."""
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        while not self.try_hold():
            if time.monotonic() >= deadline:
                raise ContextBusy(f"context {self.rec.id} is in use elsewhere (runs not yet "
                                  "checkpointed); retry later")
            time.sleep(0.005)

    def hand_over(self) -> None:
        """Let other processes take the context, when nothing here is unsaved (a no-op while
        runs wait for their checkpoint)."""
        fd = self._held
        if fd is not None and not self._dirty:
            self._held = None
            os.close(fd)

    # ---------------------------------------------------------------- the micro-VM
    def _ensure(self) -> StreamingCodeSandbox:
        """The live sandbox, resumed from the newest checkpoint when it is newer than what the
        sandbox holds (another process ran the context meanwhile). A resume starts a sandbox
        from the interpreter image (mapped once per process and shard, so a pooled micro-VM
        that served it keeps it mapped) with the checkpoint's CPU state, then reads the
        checkpoint's pages into it (`MultiUseSandbox.load_pages`): it costs the context's
        changed pages, never a copy or re-mapping of the image. Takes the context first
        (`hold`)."""
        self.hold()
        try:
            return self._load()
        except BaseException:
            self.hand_over()
            raise

    def _load(self) -> StreamingCodeSandbox:
        stored = self.store.record(self.rec.id, self.rec.tenant)
        if self._box is not None and stored.version == self._loaded:
            return self._box
        self.rec = stored
        if self._box is not None:
            self._box.close()
            self._box = None
        base = self.store.base_of(stored)
        extents: layers.Extents = ()
        if stored.digest is None:
            box = StreamingCodeSandbox(stored.lang, snapshot=base, keep_state=True,
                                       timeout=self.timeout)
        else:
            start = time.perf_counter()
            state, fd, extents = self.store.images.checkpoint(stored.layout, stored.digest or "", base)
            try:
                box = StreamingCodeSandbox(stored.lang, snapshot=state, keep_state=True,
                                           timeout=self.timeout)
                try:
                    box.load_pages(fd, extents, base)
                except BaseException:
                    box.close()
                    raise
            finally:
                os.close(fd)
            self.resumes += 1
            self.resume_seconds = time.perf_counter() - start
        self._box = box
        self._extents, self._loaded, self._dirty = extents, stored.version, False
        return box

    def run(self, code: str, *, files: Mapping[str, bytes | str] | None = None,
            timeout: Any = None, on_output: Callable[[str, str], None] | None = None
            ) -> RunResult:
        """Run `code` in the context's state (`files` under /tmp first, Python). A run cut by
        its time limit or a crash resets the context to its last checkpoint. `on_output(stream,
        text)` receives stdout and stderr while the code runs (`StreamingCodeSandbox`). The
        context stays held (`hold`) until its next checkpoint."""
        box = self._ensure()
        options: dict[str, Any] = {"timeout": self.timeout if timeout is None else timeout}
        if files is not None:
            options["files"] = files
        try:
            r = box.run(code, on_output=on_output, **options)
        except BaseException:
            self.hand_over()          # (refused arguments: nothing ran)
            raise
        if r.error is not None and r.error.type in ("TimeoutError", "InternalError"):
            # the interpreter was reset: back to the checkpoint (runs since it are lost)
            self._loaded, self._dirty = -1, False
            self.hand_over()
        else:
            self._dirty = True
        return r

    @property
    def dirty(self) -> bool:
        """Whether runs happened since the last checkpoint."""
        return self._dirty

    def checkpoint(self) -> None:
        """Save the state to the store (one diff layer on the interpreter image) and hand the
        context over (`hold`)."""
        if self._box is None or not self._dirty:
            self.hand_over()
            return
        snap = self._box.diff_snapshot()
        base = self.store.base_of(self.rec)
        extents = self._merged_extents(snap)
        self.store._save(self.rec, snap, extents, base)         # noqa: SLF001
        self._extents, self._loaded, self._dirty = extents, self.rec.version, False
        self.hand_over()

    def _merged_extents(self, snap: Snapshot) -> layers.Extents:
        """Where `snap` may differ from the interpreter image: what the stored checkpoint
        already differs in, plus what changed since it."""
        size = snap.image.size
        own = snap.delta.extents if snap.delta is not None else ((0, size),)
        return layers.merge(self._extents + tuple(own), size)

    def pause(self) -> None:
        """Checkpoint and release the micro-VM (the next run resumes from the store); the
        context is handed over even when the checkpoint fails (its runs since the last one are
        then lost)."""
        try:
            self.checkpoint()
        finally:
            self.close()

    def reset(self) -> None:
        """Back to a fresh interpreter (saved at once)."""
        base = self.store.base_of(self.rec)
        self._ensure()
        assert self._box is not None
        try:
            self._box.restore(base)
            self._extents, self._dirty = (), True
            self.checkpoint()
        finally:
            self.hand_over()

    def fork(self) -> "CodeContext":
        """A new context of the same tenant with this one's state (checkpointed)."""
        self.store._check_room(self.rec.tenant)                 # noqa: SLF001
        try:
            snap = self._ensure().diff_snapshot()
        finally:
            self.hand_over()
        now = time.time()
        cid = "ctx_" + secrets.token_hex(12)
        parent = self.rec
        shard, base = ((parent.layout, parent.base) if parent.image is not None
                       else self.store.images.shard_for(cid, parent.lang))
        rec = dataclasses.replace(parent, id=cid, created=now, used=now, version=0,
                                  digest=None, bytes=0, base=base, layout=shard)
        child = CodeContext(self.store, rec, timeout=self.timeout)
        extents = self._merged_extents(snap)
        self.store._write(rec)                                  # noqa: SLF001
        try:
            self.store._save(rec, snap, extents, self.store.base_of(rec))   # noqa: SLF001
        except BaseException:
            self.store._path(rec.id, rec.tenant).unlink(missing_ok=True)   # noqa: SLF001
            raise
        return child

    # ---------------------------------------------------------------- files
    def write_file(self, path: str, data: bytes | str) -> None:
        """Put a file under /tmp (Python contexts; `files=` name rules)."""
        self._files_only()
        self.run("None", files={path: data})

    def read_file(self, path: str) -> bytes:
        """A file under /tmp (Python contexts; `files=` name rules); ContextNotFound-like
        `FileNotFoundError` when there is none."""
        self._files_only()
        check_files({path: b""})
        try:
            r = self._ensure().run(f"open({'/tmp/' + path!r}, 'rb').read()")
        except BaseException:
            self.hand_over()
            raise
        if r.error is not None:
            self.hand_over()
            if r.error.type in ("FileNotFoundError", "IsADirectoryError", "NotADirectoryError"):
                raise FileNotFoundError(path)
            raise ArgumentError(f"cannot read {path!r}: {r.error.type}: {r.error.message}")
        self._dirty = True
        return bytes(r.value)

    def _files_only(self) -> None:
        if not language(self.rec.lang).has_files:
            raise ArgumentError(f"{language(self.rec.lang).display} contexts have no file "
                                "system")

    def kill(self) -> None:
        """Cut the run in progress (from another thread); the context goes back to its last
        checkpoint."""
        box = self._box
        if box is not None:
            box._sb.interrupt_handle().kill()       # noqa: SLF001

    def close(self) -> None:
        """Release the micro-VM without checkpointing (runs since the last checkpoint are
        lost) and hand the context over."""
        self._dirty, self._loaded = False, -1
        if self._box is not None:
            self._box.close()
            self._box = None
        self.hand_over()
