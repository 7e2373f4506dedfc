"""Pushing snapshots to and pulling them from OCI registries (the distribution API), with oras-py.

oras-py provides the HTTP session, TLS settings and the authentication backends (Basic, and
Bearer tokens obtained with Basic credentials or anonymously). The requests themselves are made
here, through that session, so that the exact bytes of every blob and of the manifest are sent and
received: the manifest is never rebuilt, and its digest is the same in the layout, in the registry
and after a pull.

A pull trusts nothing it receives: the manifest is read with a size cap and its sha256 must match
the requested digest and the registry's Docker-Content-Digest header; the config and the memory
blob are downloaded to temporary files, size-capped and sha256-checked, and the config is validated
as strictly as on load. Only then is anything committed, through the same atomic index.json swap as
`save`. A failed pull removes everything it wrote."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import (
    SnapshotDigestMismatch,
    SnapshotError,
    SnapshotNotFound,
    SnapshotReferenceError,
    SnapshotRegistryError,
)
from ..sandbox.snapshot import Snapshot
from . import files, layers, oci
from .schema import CONFIG_CAP, MANIFEST_CAP, decode_config, fail
from .validate import (
    MT_MANIFEST,
    READ_CHUNK,
    Descriptor,
    check_consistent,
    check_digest,
    check_ref,
    check_tag,
    no_raw_os_errors,
    parse_manifest,
    resolve,
)

Progress = Callable[[int], None]

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REFERENCE = re.compile(
    r"(?P<host>(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?)"
    rf"/(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?")
MAX_REPOSITORY = 255
ERROR_TEXT = 300


@dataclass(frozen=True)
class RegistryReference:
    """`host[:port]/repository[:tag][@sha256:digest]`."""

    host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What the manifest URL names: the digest if given, else the tag (default latest)."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"{self.host}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_reference(ref: object) -> RegistryReference:
    """Parse a registry reference. The registry host is required (there is no implicit Docker
    Hub): a first component with a '.' or ':', or "localhost"."""
    m = REFERENCE.fullmatch(ref) if isinstance(ref, str) else None
    # as in Docker: the first component is a host only with a '.' or ':' or as "localhost"
    if m is not None and not ("." in m["host"] or ":" in m["host"] or m["host"] == "localhost"):
        m = None
    if m is None or len(m["repo"]) > MAX_REPOSITORY:
        raise SnapshotReferenceError(f"invalid registry reference {ref!r}: expected "
                                     "host[:port]/repository[:tag][@sha256:<hex>]")
    return RegistryReference(m["host"], m["repo"], m["tag"], m["digest"])


class _FileBody:
    """A request body streaming `size` bytes of a file descriptor, hashing them as they go."""

    def __init__(self, fd: int, size: int, progress: Progress | None) -> None:
        self.fd, self.size, self.off, self.progress = fd, size, 0, progress
        self.hash = hashlib.sha256()

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        """Up to 1 MiB of the remaining bytes (b"" at the end)."""
        want = min(READ_CHUNK, self.size - self.off)
        if want <= 0:
            return b""
        data = os.pread(self.fd, want, self.off)
        if not data:
            raise OSError("blob ended before its size")
        self.off += len(data)
        self.hash.update(data)
        if self.progress is not None:
            self.progress(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read():
            yield chunk

    def digest(self) -> str:
        """sha256 of what was read."""
        return "sha256:" + self.hash.hexdigest()


class Client:
    """Requests to one repository of a registry through an oras-py session."""

    def __init__(self, ref: RegistryReference, *, insecure: bool = False,
                 username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, timeout: float = 60.0) -> None:
        try:
            import oras.provider
        except ImportError:
            raise SnapshotError("registry support needs oras-py: pip install 'snapcell[registry]'") \
                from None
        if ca_file is not None and not os.path.isfile(ca_file):
            raise SnapshotRegistryError(f"CA file {ca_file!r} does not exist")
        self.ref = ref
        self.scheme = "http" if insecure else "https"
        self.verify: bool | str = ca_file if ca_file is not None else True
        self.registry: Any = oras.provider.Registry(hostname=ref.host, insecure=insecure,
                                                    tls_verify=self.verify, auth_backend="token")
        _mount_retries(self.registry.session)
        self.insecure = insecure
        self.basic: str | None = None
        if username is not None:
            self.basic = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self.registry.auth.set_basic_auth(username, password or "")
        self.auth_header: dict[str, str] = {}
        self.timeout = timeout
        self.base = f"{self.scheme}://{ref.host}/v2/{ref.repository}"

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        self.registry.session.close()

    def url(self, path: str) -> str:
        """An API URL of this repository."""
        return f"{self.base}/{path}"

    def _authenticate(self, response: Any) -> bool:
        challenge = response.headers.get("Www-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self.basic is None or self.auth_header.get("Authorization") == f"Basic {self.basic}":
                return False
            self.auth_header = {"Authorization": f"Basic {self.basic}"}
            return True
        if scheme == "bearer":
            headers, changed = self.registry.auth.authenticate_request(response, {}, refresh=True)
            token = headers.get("Authorization") if changed else None
            if not token or self.auth_header.get("Authorization") == token:
                return False
            self.auth_header = {"Authorization": token}
            return True
        return False

    def request(self, method: str, url: str, *, expect: tuple[int, ...],
                headers: dict[str, str] | None = None,
                body: Callable[[], Any] | None = None) -> Any:
        """Send a request (re-authenticating once on 401; `body` makes a fresh body for each
        attempt) and return the response, or raise SnapshotRegistryError / SnapshotNotFound.
        Responses are streamed — nothing is read unless asked for, and then with a cap — and
        must be closed by the caller. Credentials go only to the registry's own host."""
        import requests
        same_host = urllib.parse.urlsplit(url).netloc == self.ref.host
        for attempt in range(3):
            h = dict(headers or {})
            if same_host:
                h.update(self.auth_header)
            try:
                r = self.registry.session.request(
                    method, url, headers=h, data=body() if body is not None else None,
                    stream=True, verify=self.verify, timeout=self.timeout,
                    allow_redirects=method in ("GET", "HEAD"))
            except requests.exceptions.SSLError as e:
                hint = ("; if it is a plain-HTTP registry, pass insecure=True (--insecure)"
                        if not self.insecure else "")
                raise SnapshotRegistryError(f"TLS error talking to {self.ref.host}: "
                                            f"{_reason(e)}{hint}") from None
            except requests.exceptions.RequestException as e:
                raise SnapshotRegistryError(
                    f"cannot reach registry {self.ref.host} ({_reason(e)}) after "
                    f"{RETRIES.connect} retries; is it running, and is the address right?") from None
            if r.status_code == 401 and attempt < 2 and same_host and self._authenticate(r):
                r.close()
                continue
            break
        if r.status_code in expect:
            return r
        text = ""
        if method != "HEAD":                # at most ERROR_TEXT bytes of the error body
            try:
                text = r.raw.read(ERROR_TEXT, decode_content=True).decode("utf-8", "replace")
            except Exception:
                text = ""
        r.close()
        what = f"{method} {urllib.parse.urlsplit(url).path}"
        if r.status_code == 401:
            raise SnapshotRegistryError(f"{what}: authentication required or refused (HTTP 401)")
        if r.status_code == 404 and "/manifests/" in url:
            raise SnapshotNotFound(f"{self.ref} not found in the registry")
        raise SnapshotRegistryError(f"{what}: HTTP {r.status_code} {text.strip()}")

    # ---------------------------------------------------------------- push
    def has_blob(self, desc: Descriptor) -> bool:
        """HEAD: does the repository hold this blob (with the right size)?"""
        r = self.request("HEAD", self.url(f"blobs/{desc.digest}"), expect=(200, 404))
        r.close()
        return bool(r.status_code == 200 and r.headers.get("Content-Length") == str(desc.size))

    def upload(self, desc: Descriptor, body: Callable[[], Any], progress: Progress | None,
               mount_from: str | None = None) -> bool:
        """Upload a blob unless the repository has it (HEAD), by cross-repository mount from
        `mount_from` when given and the registry offers it (201), else POST then monolithic
        PUT ?digest=. Returns True when bytes were sent."""
        if self.has_blob(desc):
            if progress is not None:
                progress(desc.size)
            return False
        query = ""
        if mount_from is not None:
            query = "?" + urllib.parse.urlencode({"mount": desc.digest, "from": mount_from})
        r = self.request("POST", self.url("blobs/uploads/") + query, expect=(201, 202),
                         headers={"Content-Length": "0"})
        r.close()
        if r.status_code == 201:                  # mounted: the registry copied it
            if progress is not None:
                progress(desc.size)
            return False
        location = r.headers.get("Location")
        if not location:
            raise SnapshotRegistryError("the registry gave no upload location")
        put = urllib.parse.urljoin(self.base + "/", location)
        put += ("&" if "?" in put else "?") + urllib.parse.urlencode({"digest": desc.digest})
        r = self.request("PUT", put, expect=(201,), body=body,
                         headers={"Content-Type": "application/octet-stream",
                                  "Content-Length": str(desc.size)})
        r.close()
        return True

    def put_manifest(self, data: bytes, reference: str) -> str | None:
        """PUT the exact manifest bytes; returns the registry's Docker-Content-Digest."""
        r = self.request("PUT", self.url(f"manifests/{reference}"), expect=(201,),
                         body=lambda: data, headers={"Content-Type": MT_MANIFEST})
        r.close()
        got = r.headers.get("Docker-Content-Digest")
        return str(got) if got is not None else None

    # ---------------------------------------------------------------- pull
    def get_manifest(self) -> bytes:
        """The manifest's exact bytes (capped)."""
        r = self.request("GET", self.url(f"manifests/{self.ref.reference}"), expect=(200,),
                         headers={"Accept": MT_MANIFEST})
        try:
            data = _read_capped(r, MANIFEST_CAP, "manifest")
            header = r.headers.get("Docker-Content-Digest")
        finally:
            r.close()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.ref.digest is not None and digest != self.ref.digest:
            raise SnapshotDigestMismatch(f"the registry sent a manifest with digest {digest}, "
                                         f"not the requested {self.ref.digest}")
        if header is not None and header != digest:
            raise SnapshotDigestMismatch(f"the manifest's digest is {digest} but the registry "
                                         f"says {str(header)[:80]}")
        return data

    def get_blob(self, desc: Descriptor) -> Any:
        """A streaming response for a blob."""
        return self.request("GET", self.url(f"blobs/{desc.digest}"), expect=(200,))


# Transient failures are retried with back-off (0.25, 0.5, 1 s) by urllib3's Retry: connection
# failures for every method (nothing reached the server), read errors and 429/5xx answers only
# for GET and HEAD (idempotent; an upload is never replayed behind the caller's back).
RETRIES: Any = None


def _mount_retries(session: Any) -> None:
    global RETRIES
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry
    if RETRIES is None:
        RETRIES = Retry(total=5, connect=3, read=2, status=3, backoff_factor=0.25,
                        status_forcelist=(429, 500, 502, 503, 504),
                        allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False,
                        respect_retry_after_header=True)
    adapter = HTTPAdapter(max_retries=RETRIES)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def _reason(e: BaseException) -> str:
    """The innermost readable cause of a requests/urllib3 error (e.g. "connection refused",
    "wrong version number"), not urllib3's pool description."""
    seen: set[int] = set()
    cur: BaseException | None = e
    best = ""
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            best = cur.strerror
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            cur = reason
            continue
        args = [a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]
        cur = args[0] if args else cur.__cause__ or cur.__context__
    if best:
        return best.lower()
    text = str(e)
    m = re.search(r"\[SSL: [A-Z_]+\] ([^(\]]+)", text)
    if m:
        return m.group(1).strip()
    m = re.search(r"Caused by \w+\((?:'[^']*', )?(?:<[^>]*>: )?'?([^')]+)", text)
    return (m.group(1) if m else text)[:200].strip()


def _chunks(r: Any, size: int) -> Iterator[bytes]:
    """The body of a streaming response; transport failures become SnapshotRegistryError."""
    import requests
    try:
        yield from r.iter_content(chunk_size=size)
    except requests.exceptions.RequestException as e:
        raise SnapshotRegistryError(f"download interrupted: {e}") from None


def _read_capped(r: Any, cap: int, what: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    for chunk in _chunks(r, 64 << 10):
        total += len(chunk)
        if total > cap:
            raise fail(f"{what} from the registry is larger than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@no_raw_os_errors("pushing the snapshot")
def push(source: "str | os.PathLike[str] | Snapshot", target: str, *, ref: str | None = None,
         insecure: bool = False, username: str | None = None, password: str | None = None,
         ca_file: str | None = None, timeout: float = 60.0, mount_from: str | None = None,
         progress: Progress | None = None, stats: dict[str, int] | None = None) -> str:
    """Push a snapshot to `target` (`host[:port]/repository[:tag]`) and return its manifest
    digest. `source` is a layout directory — the snapshot pushed is `ref`, by default the target's
    tag — or an in-memory Snapshot (saved to a temporary layout first). The layout is validated
    first and the manifest and blobs are sent byte for byte; blobs the repository already has
    (HEAD) are skipped — a child snapshot sends only its new layer — and, with `mount_from` (a
    repository of the same registry), missing blobs are first offered as cross-repository
    mounts. Every blob uploaded is hashed as it is sent and must match its digest. `insecure`
    uses plain HTTP; `ca_file` trusts a custom CA; `username`/`password` are used for Basic auth
    or to obtain a Bearer token. `stats`, when given, accumulates "blobs_sent" and "bytes_sent"
    (blob bytes uploaded; skipped and mounted blobs send none)."""
    dest = parse_reference(target)
    if isinstance(source, Snapshot):
        with tempfile.TemporaryDirectory(prefix="snapcell-push-") as tmp:
            tag = dest.tag or "latest"
            oci.save(source, tmp, tag)
            return push(tmp, target, ref=tag, insecure=insecure, username=username,
                        password=password, ca_file=ca_file, timeout=timeout,
                        mount_from=mount_from, progress=progress, stats=stats)
    if mount_from is not None and not re.fullmatch(rf"{_COMPONENT}(?:/{_COMPONENT})*", mount_from):
        raise SnapshotReferenceError(f"invalid repository name {mount_from!r} for mount_from")
    local = check_ref(ref if ref is not None else (dest.tag or dest.digest or "latest"))
    layer_fds: list[int] = []
    client: Client | None = None
    try:
        with files.Reader(source) as r:
            ie = resolve(r.entries, local)
            entry = r.entry(ie)
            oci.check_lineage(r, entry)
            manifest = r.read_blob(ie.descriptor, MANIFEST_CAP, "manifest")
            config = r.read_blob(entry.manifest.config, CONFIG_CAP, "config")
            n = len(entry.manifest.layers)
            for i, desc in enumerate(entry.manifest.layers):
                layer_fds.append(r.open_blob(desc, f"memory layer {i + 1} of {n}"))
        if dest.digest is not None and dest.digest != entry.digest:
            raise SnapshotReferenceError(f"{target} names digest {dest.digest} but the snapshot "
                                         f"is {entry.digest}")
        client = Client(dest, insecure=insecure, username=username, password=password,
                        ca_file=ca_file, timeout=timeout)
        sent = [(entry.manifest.config,
                 client.upload(entry.manifest.config, lambda: config, None, mount_from))]
        for fd, desc in zip(layer_fds, entry.manifest.layers):
            bodies: list[_FileBody] = []

            def layer_body(fd: int = fd, desc: Descriptor = desc,
                           bodies: list[_FileBody] = bodies) -> _FileBody:
                bodies.append(_FileBody(fd, desc.size, progress))
                return bodies[-1]

            try:
                sent.append((desc, client.upload(desc, layer_body, progress, mount_from)))
            finally:
                if bodies and bodies[-1].off == desc.size:
                    check_digest(bodies[-1].digest(), desc, "memory layer")
        if stats is not None:
            stats["blobs_sent"] = stats.get("blobs_sent", 0) + sum(1 for _, s in sent if s)
            stats["bytes_sent"] = stats.get("bytes_sent", 0) + sum(x.size for x, s in sent if s)
        got = client.put_manifest(manifest, dest.tag or entry.digest)
        if got is not None and got != entry.digest:
            raise SnapshotRegistryError(f"the registry stored the manifest as {got}, not "
                                        f"{entry.digest}")
    finally:
        for fd in layer_fds:
            os.close(fd)
        if client is not None:
            client.close()
    return entry.digest


@no_raw_os_errors("pulling the snapshot")
def pull(source: str, directory: str | os.PathLike[str], *, tag: str | None = None,
         insecure: bool = False, username: str | None = None, password: str | None = None,
         ca_file: str | None = None, timeout: float = 60.0,
         progress: Progress | None = None) -> str:
    """Pull `source` (`host[:port]/repository[:tag][@sha256:digest]`) into the layout at
    `directory` under `tag` (default: the source's tag; a by-digest pull without a tag is stored
    untagged, loadable by digest). Returns the manifest digest. Everything is verified (digests,
    sizes, the strict schema) before anything is committed; the memory blob is written sparse."""
    src = parse_reference(source)
    store = check_tag(tag) if tag is not None else (src.tag if src.tag or src.digest else "latest")
    client = Client(src, insecure=insecure, username=username, password=password,
                    ca_file=ca_file, timeout=timeout)
    try:
        return _pull(client, directory, store, progress)
    finally:
        client.close()


def _pull(client: Client, directory: str | os.PathLike[str], store: str | None,
          progress: Progress | None) -> str:
    manifest_data = client.get_manifest()
    manifest = parse_manifest(manifest_data)
    with files.Writer(directory) as w:
        r = client.get_blob(manifest.config)
        try:
            config_data = _read_capped(r, CONFIG_CAP, "config")
        finally:
            r.close()
        if len(config_data) != manifest.config.size:
            raise fail(f"config blob is {len(config_data)} bytes, the manifest says "
                       f"{manifest.config.size}")
        check_digest(config_data, manifest.config, "config")
        config = decode_config(config_data)
        check_consistent(manifest, config)
        n = len(manifest.layers)
        for i, desc in enumerate(manifest.layers):
            what = f"memory layer {i + 1} of {n}" if manifest.version == 2 else "memory"
            if w.has_blob(desc):                # only missing blobs are fetched
                if progress is not None:
                    progress(desc.size)
                continue
            fd, name = w.new_temp_blob()
            try:
                digest = _download(client, desc, fd, progress, sparse=manifest.version == 1)
                check_digest(digest, desc, what)
                if manifest.version == 2:
                    layers.read_table(fd, desc.size, config.memory_size, what)
            except BaseException:
                os.close(fd)
                raise
            w.commit_temp_blob(fd, name, desc, hashed=True)
        cfg = w.put_blob(config_data, manifest.config.media_type)
        man = w.put_blob(manifest_data, MT_MANIFEST)
        assert cfg.digest == manifest.config.digest
        w.set_tag(man, store)
    return man.digest


def _download(client: Client, desc: Descriptor, fd: int, progress: Progress | None,
              sparse: bool = True) -> str:
    """Stream a blob into `fd` (sparse: all-zero pieces stay holes), at most `desc.size` bytes;
    returns its digest."""
    h = hashlib.sha256()
    off = 0
    r = client.get_blob(desc)
    try:
        for chunk in _chunks(r, READ_CHUNK):
            if off + len(chunk) > desc.size:
                raise fail(f"blob {desc.digest} from the registry is larger than {desc.size} bytes")
            h.update(chunk)
            if sparse:
                files.write_sparse(fd, chunk, off)
            else:
                files.write_all(fd, chunk, off)
            off += len(chunk)
            if progress is not None:
                progress(len(chunk))
    finally:
        r.close()
    if off != desc.size:
        raise fail(f"blob {desc.digest} from the registry ended after {off} of {desc.size} bytes")
    os.ftruncate(fd, desc.size)
    return "sha256:" + h.hexdigest()
