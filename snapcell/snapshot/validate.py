"""Validation of untrusted OCI layout structures and safe access to layout files.

Everything read from a layout directory or a registry goes through here: the `oci-layout` marker,
`index.json`, image manifests and descriptors (strict keys, exact media types, sizes, digests,
tags), and the host gates a snapshot must pass (ABI, architecture, hypervisor, CPU). Files are
opened relative to directory descriptors with O_NOFOLLOW at every component, must be regular
files, and are read with size caps checked before reading."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from ..errors import (
    SnapshotDigestMismatch,
    SnapshotIOError,
    SnapshotNotFound,
    SnapshotReferenceError,
)
from ..machine.baselines import HostCpu
from ..machine.layout import PAGE
from .schema import (
    CONFIG_CAP,
    INDEX_CAP,
    MANIFEST_CAP,
    MAX_LAYER_BLOB,
    MAX_LAYERS,
    MAX_MEMORY_BLOB,
    OCI_LAYOUT_CAP,
    SnapshotConfig,
    array,
    dumps_canonical,
    fail,
    integer,
    loads_strict,
    obj,
    string,
)

OCI_LAYOUT_FILE, INDEX_FILE, BLOBS_DIR, ALGORITHM = "oci-layout", "index.json", "blobs", "sha256"
OCI_LAYOUT_VERSION = "1.0.0"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Format 1: one raw memory blob. Format 2 (written now): a chain of extent layers.
ARTIFACT_TYPE_V1 = "application/vnd.snapcell.snapshot.v1"
ARTIFACT_TYPE = "application/vnd.snapcell.snapshot.v2"
ARTIFACT_TYPES = {ARTIFACT_TYPE_V1: 1, ARTIFACT_TYPE: 2}
ARTIFACT_FAMILY = re.compile(r"application/vnd\.snapcell\.snapshot\.v([0-9]{1,6})")
MT_CONFIG_V1 = "application/vnd.snapcell.snapshot.config.v1+json"
MT_CONFIG = "application/vnd.snapcell.snapshot.config.v2+json"
MT_MEMORY = "application/vnd.snapcell.snapshot.memory.v1"
MT_LAYER = "application/vnd.snapcell.snapshot.memory.extents.v2"
REF_NAME = "org.opencontainers.image.ref.name"

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
BLOB_NAME = re.compile(r"[0-9a-f]{64}")
MAX_INDEX_ENTRIES = 4096
MAX_ANNOTATIONS = 64
READ_CHUNK = 1 << 20


_P = ParamSpec("_P")
_R = TypeVar("_R")


def no_raw_os_errors(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a public persistence function so that an OSError it meets (a permission, a full
    disk, an I/O error, a file truncated while read) surfaces as a SnapshotIOError naming `what`
    instead of a raw OSError."""
    def wrap(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(fn)
        def inner(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return fn(*args, **kwargs)
            except OSError as e:
                raise SnapshotIOError(f"{what} failed: {e.strerror or e}"
                                      + (f" ({e.filename})" if e.filename else ""), e.errno) from e
        return inner
    return wrap


# ------------------------------------------------------------------------------ references
def check_tag(tag: object) -> str:
    """A tag: 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'."""
    if not isinstance(tag, str) or not TAG.fullmatch(tag):
        raise SnapshotReferenceError(f"invalid tag {tag!r}: use 1-128 characters of "
                                     "[A-Za-z0-9_.-], not starting with '.' or '-'")
    return tag


def is_digest(ref: str) -> bool:
    """True for a well-formed `sha256:<64 hex>` digest."""
    return DIGEST.fullmatch(ref) is not None


def check_ref(ref: object) -> str:
    """A tag or a `sha256:` digest."""
    if isinstance(ref, str) and is_digest(ref):
        return ref
    if isinstance(ref, str) and ref.startswith("sha256:"):
        raise SnapshotReferenceError(f"invalid digest {ref!r}: expected sha256:<64 lowercase hex>")
    return check_tag(ref)


# ------------------------------------------------------------------------------ descriptors
@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (media type, sha256 digest, size)."""

    media_type: str
    digest: str
    size: int

    @property
    def hex(self) -> str:
        """The digest's hex part: the blob's file name."""
        return self.digest[len("sha256:"):]

    def to_json(self) -> dict[str, object]:
        """As a JSON object."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class IndexEntry:
    """One `manifests` entry of index.json; `raw` is kept verbatim when the index is rewritten."""

    descriptor: Descriptor
    tag: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    """A snapshot image manifest: one config and its memory layers (format 1: exactly one raw
    memory blob; format 2: a chain of extent layers, base first)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    version: int

    @property
    def layer(self) -> Descriptor:
        """The newest layer (format 1: the memory blob)."""
        return self.layers[-1]


def artifact_version(v: object, what: str) -> int:
    """The snapshot format of an artifact type; a clear error for one of a newer snapcell."""
    s = string(v, what)
    version = ARTIFACT_TYPES.get(s)
    if version is not None:
        return version
    m = ARTIFACT_FAMILY.fullmatch(s)
    if m is not None and int(m[1]) > max(ARTIFACT_TYPES.values()):
        raise fail(f"{what}: snapshot format {int(m[1])} was written by a newer snapcell; this one "
                   f"reads formats 1-{max(ARTIFACT_TYPES.values())} (upgrade snapcell)")
    raise fail(f"{what} is {s[:80]!r}: not a snapcell snapshot (expected {ARTIFACT_TYPE!r})")


def digest_string(v: object, what: str) -> str:
    """A `sha256:<hex>` digest field."""
    s = string(v, what, max_len=80)
    if not DIGEST.fullmatch(s):
        raise fail(f"{what} = {s[:80]!r} is not a sha256 digest (sha256:<64 lowercase hex>)")
    return s


def _descriptor(v: object, what: str, media_type: str, max_size: int,
                optional: tuple[str, ...] = ()) -> tuple[Descriptor, dict[str, Any]]:
    d = obj(v, what, ("mediaType", "digest", "size"), optional)
    mt = string(d["mediaType"], f"{what}.mediaType")
    if mt != media_type:
        raise fail(f"{what}.mediaType is {mt[:80]!r}, expected {media_type!r}")
    digest = digest_string(d["digest"], f"{what}.digest")
    size = integer(d["size"], f"{what}.size", 1, max_size)
    return Descriptor(mt, digest, size), d


def parse_oci_layout(data: bytes) -> None:
    """`oci-layout` must be exactly {"imageLayoutVersion": "1.0.0"}."""
    d = obj(loads_strict(data, OCI_LAYOUT_FILE, OCI_LAYOUT_CAP), OCI_LAYOUT_FILE,
            ("imageLayoutVersion",))
    if d["imageLayoutVersion"] != OCI_LAYOUT_VERSION:
        raise fail(f"unsupported imageLayoutVersion {str(d['imageLayoutVersion'])[:40]!r} "
                   f"(expected {OCI_LAYOUT_VERSION!r})")


def _annotations(v: object, what: str) -> dict[str, str]:
    if not isinstance(v, dict):
        raise fail(f"{what} must be a JSON object")
    if len(v) > MAX_ANNOTATIONS:
        raise fail(f"{what} has more than {MAX_ANNOTATIONS} entries")
    for k, val in v.items():
        string(k, f"{what} key", max_len=256)
        string(val, f"{what}[{k[:64]!r}]", max_len=4096)
    return v


def parse_index(data: bytes) -> list[IndexEntry]:
    """index.json: schemaVersion 2, optional mediaType (the OCI index type) and annotations, and
    a list of image-manifest descriptors; tags must be valid and unique."""
    d = obj(loads_strict(data, INDEX_FILE, INDEX_CAP), INDEX_FILE, ("schemaVersion", "manifests"),
            ("mediaType", "annotations"))
    if integer(d["schemaVersion"], "index.json schemaVersion", 0, 1 << 31) != 2:
        raise fail("index.json schemaVersion must be 2")
    if "mediaType" in d and d["mediaType"] != MT_INDEX:
        raise fail(f"index.json mediaType must be {MT_INDEX!r}")
    if "annotations" in d:
        _annotations(d["annotations"], "index.json annotations")
    entries: list[IndexEntry] = []
    tags: set[str] = set()
    for i, item in enumerate(array(d["manifests"], "index.json manifests", MAX_INDEX_ENTRIES)):
        what = f"index.json manifests[{i}]"
        desc, raw = _descriptor(item, what, MT_MANIFEST, MANIFEST_CAP,
                                ("annotations", "artifactType"))
        if "artifactType" in raw:
            artifact_version(raw["artifactType"], f"{what}.artifactType")
        tag = None
        if "annotations" in raw:
            ann = _annotations(raw["annotations"], f"{what}.annotations")
            if REF_NAME in ann:
                tag = ann[REF_NAME]
                if not TAG.fullmatch(tag):
                    raise fail(f"{what}: invalid tag {tag[:80]!r}")
                if tag in tags:
                    raise fail(f"index.json lists tag {tag!r} more than once")
                tags.add(tag)
        entries.append(IndexEntry(desc, tag, raw))
    return entries


def index_bytes(entries: list[dict[str, Any]]) -> bytes:
    """Canonical index.json bytes for these raw manifest entries."""
    return dumps_canonical({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries})


def index_entry(descriptor: Descriptor, tag: str | None) -> dict[str, Any]:
    """The index.json entry for a snapshot manifest (tagged or not)."""
    e: dict[str, Any] = {**descriptor.to_json(), "artifactType": ARTIFACT_TYPE}
    if tag is not None:
        e["annotations"] = {REF_NAME: tag}
    return e


def resolve(entries: list[IndexEntry], ref: str) -> IndexEntry:
    """The entry for a tag or manifest digest; SnapshotNotFound when there is none."""
    if is_digest(ref):
        for e in entries:
            if e.descriptor.digest == ref:
                return e
    else:
        for e in entries:
            if e.tag == ref:
                return e
    raise SnapshotNotFound(f"no snapshot {ref!r} in this layout")


def parse_manifest(data: bytes) -> Manifest:
    """A snapshot image manifest: schemaVersion 2, the OCI manifest media type, a snapcell
    artifact type (format 1 or 2), the config descriptor of that format and its layers — format
    1: exactly one raw memory layer whose size is a positive page multiple; format 2: 1 to
    MAX_LAYERS extent layers with pairwise different digests (a chain that repeats a layer is
    refused)."""
    d = obj(loads_strict(data, "manifest", MANIFEST_CAP), "manifest",
            ("schemaVersion", "mediaType", "artifactType", "config", "layers"))
    if integer(d["schemaVersion"], "manifest schemaVersion", 0, 1 << 31) != 2:
        raise fail("manifest schemaVersion must be 2")
    if d["mediaType"] != MT_MANIFEST:
        raise fail(f"manifest mediaType must be {MT_MANIFEST!r}")
    version = artifact_version(d["artifactType"], "manifest artifactType")
    config, _ = _descriptor(d["config"], "manifest config",
                            MT_CONFIG_V1 if version == 1 else MT_CONFIG, CONFIG_CAP)
    layers = array(d["layers"], "manifest layers", MAX_LAYERS)
    if version == 1:
        if len(layers) != 1:
            raise fail(f"a format-1 snapshot manifest has exactly one layer, this one has "
                       f"{len(layers)}")
        layer, _ = _descriptor(layers[0], "manifest layers[0]", MT_MEMORY, MAX_MEMORY_BLOB)
        if layer.size % PAGE:
            raise fail(f"memory layer size {layer.size} is not a multiple of {PAGE}")
        return Manifest(config, (layer,), 1)
    if not layers:
        raise fail("a snapshot manifest needs at least one memory layer")
    out = tuple(_descriptor(v, f"manifest layers[{i}]", MT_LAYER, MAX_LAYER_BLOB)[0]
                for i, v in enumerate(layers))
    if len({x.digest for x in out}) != len(out):
        raise fail("manifest layers repeat a layer: the parent chain has a cycle")
    return Manifest(config, out, 2)


def manifest_bytes(config: Descriptor, layers: tuple[Descriptor, ...] | Descriptor) -> bytes:
    """Canonical manifest bytes (format 2 unless the layer is a format-1 memory blob)."""
    chain = (layers,) if isinstance(layers, Descriptor) else layers
    artifact = ARTIFACT_TYPE_V1 if chain[0].media_type == MT_MEMORY else ARTIFACT_TYPE
    return dumps_canonical({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                            "artifactType": artifact, "config": config.to_json(),
                            "layers": [x.to_json() for x in chain]})


def check_consistent(manifest: Manifest, config: SnapshotConfig) -> None:
    """Manifest and config must be of the same format; a format-1 memory layer's size must be
    the config's memory size; format-2 layers must be exactly those the config names (their
    sizes are checked against the image when their tables are read)."""
    if manifest.version != min(config.format_version, 2):     # format 3 = 2 + a CPU baseline
        raise fail(f"a format-{manifest.version} manifest has a format-{config.format_version} "
                   "config")
    if manifest.version == 1 and manifest.layer.size != config.memory_size:
        raise fail(f"memory layer is {manifest.layer.size} bytes, the config says "
                   f"{config.memory_size}")
    if manifest.version == 2 and tuple(x.digest for x in manifest.layers) != config.layers:
        raise fail("the manifest's memory layers are not the ones its config names "
                   "(memory.layers): layers swapped, dropped or added")


def check_digest(data: bytes | str, descriptor: Descriptor, what: str) -> None:
    """`data` (bytes, or an already computed digest) must match the descriptor's digest."""
    got = data if isinstance(data, str) else "sha256:" + hashlib.sha256(data).hexdigest()
    if got != descriptor.digest:
        raise SnapshotDigestMismatch(f"{what} {descriptor.digest} has digest {got}: the blob was "
                                     "modified or corrupted")


# ------------------------------------------------------------------------------ host gates
def host_gates(config: SnapshotConfig) -> HostCpu:
    """Refuse a snapshot for another ABI, architecture, hypervisor or a CPU baseline this host
    lacks (SnapshotIncompatibleHost). Returns the host's CPU."""
    from ..sandbox.multi_use import check_host
    return check_host(config.abi_version, config.arch, config.hypervisor, config.cpu_baseline)


# ------------------------------------------------------------------------------ safe files
def open_dir(parent_fd: int, name: str, what: str) -> int:
    """Open a directory below `parent_fd` without following a symlink."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=parent_fd)
    except FileNotFoundError:
        raise fail(f"{what} is missing") from None
    except OSError as e:
        raise fail(f"{what} is not a directory (symlinks are refused): {e.strerror}") from None


def open_regular(dir_fd: int, name: str, what: str) -> int:
    """Open a regular file below `dir_fd` read-only: O_NOFOLLOW (a symlink fails), O_NONBLOCK
    (a FIFO cannot block the open), then fstat must say S_ISREG."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                     | os.O_NOCTTY, dir_fd=dir_fd)
    except FileNotFoundError:
        raise fail(f"{what} is missing") from None
    except OSError as e:
        raise fail(f"{what} cannot be opened (symlinks are refused): {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"{what} is not a regular file")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int, cap: int, what: str) -> bytes:
    """All of a regular file, refusing files larger than `cap` (checked with fstat first and
    again while reading, in case the file grows)."""
    size = os.fstat(fd).st_size
    if size > cap:
        raise fail(f"{what} is {size} bytes; at most {cap} allowed")
    chunks: list[bytes] = []
    total = 0
    while True:
        b = os.pread(fd, min(READ_CHUNK, cap + 1 - total), total)
        if not b:
            break
        chunks.append(b)
        total += len(b)
        if total > cap:
            raise fail(f"{what} is larger than {cap} bytes")
    return b"".join(chunks)


def read_file(dir_fd: int, name: str, cap: int, what: str) -> bytes:
    """open_regular + read_fd + close."""
    fd = open_regular(dir_fd, name, what)
    try:
        return read_fd(fd, cap, what)
    finally:
        os.close(fd)


def sha256_fd(fd: int, size: int, progress: Callable[[int], None] | None = None) -> str:
    """The sha256 digest of the first `size` bytes of `fd`, read through `fd` itself;
    SnapshotFormatError if the file ends early."""
    h = hashlib.sha256()
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    off = 0
    while off < size:
        n = os.preadv(fd, [view[:min(READ_CHUNK, size - off)]], off)
        if n <= 0:
            raise fail(f"blob ends at byte {off}; expected {size}")
        h.update(view[:n])
        off += n
        if progress is not None:
            progress(n)
    return "sha256:" + h.hexdigest()
