"""The interpreter images of a `ContextStore` (snapcell/code/contexts.py) in this process, and
the checkpoints read against them.

A process holds ONE image of each interpreter (by manifest digest), whichever of the store's
layouts hold it: the shards' copies are the same manifest, so their chains are registered on
that one snapshot (`known_in`). Checkpoints of every shard then resume onto the same image, and
pooled micro-VMs that served any context keep it mapped. A package image is the process's
`image_snapshot` of its reference, registered in its layout ``images/<digest prefix>``."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ..errors import SnapshotFormatError, SnapshotNotFound
from ..sandbox import Snapshot
from ..snapshot import content, layers
from ..snapshot.files import Reader
from ..snapshot.schema import MAX_LAYERS, check_xsave
from ..snapshot.validate import host_gates, no_raw_os_errors, resolve
from .image_store import image_snapshot
from .languages import Language, language
from .warm import warm_snapshot

SHARDS = 16
_BASE_TAG = "base-{lang}-{sha}"


def _guest_sha(spec: Language) -> str:
    h = hashlib.sha256()
    with open(spec.guest_path(), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class ContextImages:
    """The interpreter images of the store at `root`, loaded or registered once per process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = str(root / "layout")
        self._lock = threading.Lock()
        self._bases: dict[str, Snapshot] = {}       # manifest digest → interpreter image
        self._in_layouts: set[tuple[str, str]] = set()   # (layout or "", digest) registered
        self._base_of_lang: dict[str, str] = {}
        self._tag_of_lang: dict[str, str] = {}     # language → its interpreter image's tag

    # A process holds ONE image of each interpreter (by manifest digest), whichever layouts
    # hold it: the shards' copies are the same manifest, so their chains are registered on
    # that one snapshot (`_known_in`). Checkpoints of every shard then resume onto the same
    # image, and pooled micro-VMs that served any context keep it mapped.
    def base_for(self, lang: str) -> tuple[str, Snapshot]:
        """(manifest digest, snapshot) of `lang`'s interpreter image in the layout, saved
        there from the warm snapshot the first time."""
        spec = language(lang)
        with self._lock:
            digest = self._base_of_lang.get(spec.name)
            if digest is not None:
                return digest, self._bases[digest]
            tag = _BASE_TAG.format(lang=spec.name, sha=_guest_sha(spec)[:16])
            self._tag_of_lang[spec.name] = tag
            try:
                snap = Snapshot.checked_load(self.layout, tag)
            except SnapshotNotFound:
                warm_snapshot(spec).save(self.layout, tag, max_depth=1)
                snap = Snapshot.checked_load(self.layout, tag)
            digest = snap.digest
            assert digest is not None
            snap = self._bases.setdefault(digest, snap)
            self._in_layouts.add(("", digest))
            self._base_of_lang[spec.name] = digest
            return digest, snap

    def base(self, shard: str, digest: str, image: str | None = None) -> Snapshot:
        """The interpreter image `digest`, known to be saved in `shard` (its checkpoints are
        diffs on it): a package image is the process's `image_snapshot(image)` (mapped from
        its own layout), a language's own is loaded from the shard."""
        with self._lock:
            snap = self._bases.get(digest)
            if snap is not None and (shard, digest) in self._in_layouts:
                return snap
        if snap is None:
            if image is not None:
                snap = image_snapshot(image)
                if snap.digest != digest:
                    raise SnapshotFormatError(f"the image {image!r} is {snap.digest} here, not "
                                              f"{digest}, the image the context was made on")
                self.known_in(snap, shard)
            else:
                snap = Snapshot.checked_load(str(self.root / shard), digest)
            with self._lock:
                snap = self._bases.setdefault(digest, snap)
        else:
            self.known_in(snap, shard)
        with self._lock:
            self._in_layouts.add((shard, digest))
        return snap

    @no_raw_os_errors("reading the context store")
    def known_in(self, snap: Snapshot, shard: str) -> None:
        """Register `snap`'s chain in `shard`, which holds the same manifest (validated, its
        layer files present), without loading its memory again."""
        assert snap.digest is not None
        with Reader(str(self.root / shard)) as r:
            e = r.entry(resolve(r.entries, snap.digest))
            for i, desc in enumerate(e.manifest.layers):
                os.close(r.open_blob(desc, f"memory layer {i}"))
            content.remember(snap, content.layout_key(r.root),
                             content.Chain(e.digest, e.manifest.layers, e.config.parent,
                                           e.manifest.version))

    # ---------------------------------------------------------------- shards
    # Checkpoints live in SHARDS layouts, each with its own copy of the interpreter images
    # (saved there from the main layout's once): an index of thousands of tags would make
    # every save and load parse all of them, and a chain's layers must be in its layout.
    def shard_for(self, cid: str, lang: str) -> tuple[str, str]:
        """(shard, manifest digest of `lang`'s interpreter image there) for a new context."""
        rel = f"shards/{int(cid[4:8], 16) % SHARDS:02x}"
        digest, main = self.base_for(lang)
        with self._lock:
            if (rel, digest) in self._in_layouts:
                return rel, digest
        tag = self._tag_of_lang[language(lang).name]       # (base_for hashed the guest once)
        path = str(self.root / rel)
        try:
            self.known_in(main, rel)
        except SnapshotNotFound:
            main.save(path, tag, max_depth=1)
            self.known_in(main, rel)
        with self._lock:
            self._in_layouts.add((rel, digest))
        return rel, digest

    def image_layout(self, image: str) -> tuple[str, str]:
        """(layout, manifest digest) of package image `image` in the store: the image's own
        layout ``images/<digest prefix>`` holds it (saved there once: its size on disk) and
        its contexts' checkpoints."""
        snap = image_snapshot(image)
        digest = snap.digest
        assert digest is not None
        rel = f"images/{digest[7:31]}"
        with self._lock:
            if (rel, digest) in self._in_layouts:
                return rel, digest
        try:
            self.known_in(snap, rel)
        except SnapshotNotFound:
            snap.save(str(self.root / rel), f"image-{digest[7:23]}", max_depth=MAX_LAYERS - 1)
            self.known_in(snap, rel)
        with self._lock:
            self._bases.setdefault(digest, snap)
            self._in_layouts.add((rel, digest))
        return rel, digest

    @no_raw_os_errors("resuming the context")
    def checkpoint(self, shard: str, digest: str, base: Snapshot
                   ) -> tuple[Snapshot, int, layers.Extents]:
        """Checkpoint `digest` of `shard`, without its memory image: (its state with the
        interpreter image `base` as memory, a descriptor of its layer file, the layer's
        extents). The caller reads the layer's pages over `base` and closes the descriptor.
        Validated as a load is (layout, manifest, config, host gates, the layer's table), and
        the checkpoint must be one layer on `base`'s chain in the shard."""
        with Reader(str(self.root / shard)) as r:
            e = r.entry(resolve(r.entries, digest))
            host = host_gates(e.config)
            assert e.config.cpu.xsave is not None
            check_xsave(e.config.cpu.xsave, (host.xcr0,))
            chain = content.chain_of(base, content.layout_key(r.root))
            descs = e.manifest.layers
            if chain is None or e.manifest.version != 2 or tuple(descs[:-1]) != chain.layers:
                raise SnapshotFormatError(f"the context checkpoint {digest} is not one layer on "
                                          "its interpreter image")
            fd = r.open_blob(descs[-1], "memory layer")
            try:
                table = layers.read_table(fd, descs[-1].size, e.config.memory_size,
                                          "memory layer")
            except BaseException:
                os.close(fd)
                raise
        return e.config.to_snapshot(base.image, e.digest), fd, table.extents
