"""Push and pull against a real registry: Debian's `docker-registry` (distribution 2.x) started
per module on 127.0.0.1, plain HTTP without auth, and a second one with TLS (a throw-away
self-signed certificate) and htpasswd Basic auth. Manifest digests round-trip; tampered registry
blobs are rejected on pull and leave the target layout untouched."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from snapcell import MultiUseSandbox, Snapshot
from snapcell.errors import (
    SnapshotDigestMismatch,
    SnapshotNotFound,
    SnapshotReferenceError,
    SnapshotRegistryError,
)
from snapcell.snapshot import oci, parse_reference

from .conftest import make_host_functions, open_fds
from .test_snapshot_files import blob_path, index_entry, layout, manifest_of, small_snapshot, template_layout

_ = (layout, small_snapshot, template_layout)
REGISTRY_BIN = "/usr/bin/docker-registry"


@dataclass
class Registry:
    """A running registry: `host` is 127.0.0.1:<port>, `storage` its filesystem root."""

    host: str
    storage: Path
    proc: subprocess.Popen[bytes]
    ca_file: str | None = None

    def blob_data(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes."""
        hx = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hx[:2] / hx / "data"


def snapshot_memory(layout: Path, tag: str = "base") -> int:
    """Bytes of guest memory (above GUEST_BASE) of a saved snapshot."""
    return int(oci.inspect(str(layout), tag)["memory_blob_size"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp: Path, extra: str = "", scheme: str = "http", verify: bool | str = True,
           ca_file: str | None = None) -> Registry:
    port = _free_port()
    storage = tmp / "storage"
    storage.mkdir()
    config = tmp / "config.yml"
    config.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{extra}""")
    with open(tmp / "registry.log", "wb") as log:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=subprocess.DEVNULL,
                                stderr=log)
    deadline = time.monotonic() + 15
    while True:
        try:
            r = requests.get(f"{scheme}://127.0.0.1:{port}/v2/", timeout=1, verify=verify)
            if r.status_code in (200, 401):
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("docker-registry did not start: "
                               + (tmp / "registry.log").read_text()[-2000:])
        time.sleep(0.05)
    return Registry(f"127.0.0.1:{port}", storage, proc, ca_file)


def _stop(reg: Registry) -> None:
    reg.proc.terminate()
    try:
        reg.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        reg.proc.kill()
        reg.proc.wait()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry without auth."""
    reg = _start(tmp_path_factory.mktemp("registry"))
    yield reg
    _stop(reg)


USER, PASSWORD = "snap", "cell-secret"


@pytest.fixture(scope="module")
def secure_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An HTTPS registry (self-signed certificate for 127.0.0.1) with htpasswd Basic auth."""
    tmp = tmp_path_factory.mktemp("secure-registry")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    hashed = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    (tmp / "htpasswd").write_text(f"{USER}:{hashed}\n")
    extra = f"""  tls:
    certificate: {cert}
    key: {key}
auth:
  htpasswd:
    realm: snapcell-test
    path: {tmp / "htpasswd"}
"""
    reg = _start(tmp, extra, "https", str(cert), str(cert))
    yield reg
    _stop(reg)


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")} if d.exists() else set()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ round trips
def test_push_pull_round_trips_the_manifest_digest(registry: Registry, layout: Path,
                                                   tmp_path: Path) -> None:
    local = index_entry(layout)["digest"]
    pushed: list[int] = []
    assert Snapshot.push(str(layout), f"{registry.host}/snapcell/rt:base", insecure=True,
                         ref="base", progress=pushed.append) == local
    assert sum(pushed) == manifest_of(layout)["layers"][0]["size"]
    target = tmp_path / "pulled"
    assert Snapshot.pull(f"{registry.host}/snapcell/rt:base", str(target), insecure=True) == local
    assert oci.entries(str(target)) == [("base", local)]
    m = manifest_of(layout)
    for digest in (local, m["config"]["digest"], m["layers"][0]["digest"]):
        assert _sha(blob_path(target, digest)) == _sha(blob_path(layout, digest))
    mem = blob_path(target, m["layers"][0]["digest"])
    assert mem.stat().st_size < snapshot_memory(layout) // 4             # only stored pages
    snap = Snapshot.checked_load(str(target), "base")
    assert snap.digest == local
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == 11 and sb.call("Add", 1, 2) == 3
    # pulling again changes nothing; pushing again is idempotent
    before = {p: _sha(target / p) for p in _files(target) if (target / p).is_file()}
    assert Snapshot.pull(f"{registry.host}/snapcell/rt:base", str(target), insecure=True) == local
    assert {p: _sha(target / p) for p in _files(target) if (target / p).is_file()} == before
    stored = _files(registry.storage)
    assert Snapshot.push(str(layout), f"{registry.host}/snapcell/rt:base", insecure=True) == local
    assert _files(registry.storage) == stored


def test_push_a_snapshot_and_pull_by_digest(registry: Registry, small_snapshot: Snapshot,
                                            tmp_path: Path) -> None:
    digest = Snapshot.push(small_snapshot, f"{registry.host}/snapcell/obj:v1", insecure=True)
    target = tmp_path / "by-digest"
    assert Snapshot.pull(f"{registry.host}/snapcell/obj@{digest}", str(target), insecure=True) == digest
    assert oci.entries(str(target)) == [(None, digest)]                 # stored untagged
    assert Snapshot.load(str(target), digest).digest == digest
    assert Snapshot.pull(f"{registry.host}/snapcell/obj@{digest}", str(target), insecure=True,
                         tag="named") == digest
    assert oci.entries(str(target)) == [(None, digest), ("named", digest)]


def test_missing_tags_and_bad_references(registry: Registry, layout: Path, tmp_path: Path) -> None:
    with pytest.raises(SnapshotNotFound):
        Snapshot.pull(f"{registry.host}/snapcell/none:nope", str(tmp_path / "x"), insecure=True)
    assert not (tmp_path / "x").exists()
    with pytest.raises(SnapshotNotFound):
        Snapshot.push(str(layout), f"{registry.host}/snapcell/rt:not-a-local-tag", insecure=True)
    for bad in ("snapcell/rt:base", "http://127.0.0.1:5000/x:y", f"{registry.host}/UPPER:x",
                f"{registry.host}/x:bad/tag", f"{registry.host}/x@sha256:abc", ""):
        with pytest.raises(SnapshotReferenceError):
            parse_reference(bad)
    ref = parse_reference(f"{registry.host}/a/b-c:t1@sha256:" + "0" * 64)
    assert (ref.repository, ref.tag) == ("a/b-c", "t1")


def test_unreachable_registry(layout: Path, tmp_path: Path) -> None:
    port = _free_port()
    t = time.monotonic()
    with pytest.raises(SnapshotRegistryError):
        Snapshot.push(str(layout), f"127.0.0.1:{port}/x:base", insecure=True)
    with pytest.raises(SnapshotRegistryError):
        Snapshot.pull(f"127.0.0.1:{port}/x:base", str(tmp_path / "x"), insecure=True)
    assert time.monotonic() - t < 10
    assert not (tmp_path / "x").exists()
    with pytest.raises(SnapshotRegistryError) as e:
        Snapshot.pull(f"127.0.0.1:{port}/x:base", str(tmp_path / "x"), insecure=True)
    msg = str(e.value)           # one line, the cause in words, no urllib3 pool description
    assert "\n" not in msg and "connection refused" in msg and "HTTPConnectionPool" not in msg


def test_tls_to_a_plain_http_registry_says_to_use_insecure(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(SnapshotRegistryError) as e:
        Snapshot.pull(f"{registry.host}/x:base", str(tmp_path / "x"))
    assert "TLS" in str(e.value) and "insecure=True" in str(e.value) and "\n" not in str(e.value)


def test_transient_registry_errors_are_retried(tmp_path: Path) -> None:
    """A registry that answers 503 twice, then 404: the pull retries (urllib3 Retry, with
    back-off) and ends with the real answer."""
    import http.server
    import threading

    seen: list[str] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(503 if len(seen) <= 2 else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with pytest.raises(SnapshotNotFound):
            Snapshot.pull(f"127.0.0.1:{srv.server_address[1]}/x:base", str(tmp_path / "x"),
                          insecure=True)
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(seen) == 3 and all("/manifests/base" in p for p in seen)


# ------------------------------------------------------------------------------ tampering
@pytest.mark.parametrize("which", ["memory", "config", "manifest"])
def test_pull_rejects_a_tampered_registry_blob(registry: Registry, layout: Path, tmp_path: Path,
                                               which: str) -> None:
    repo = f"{registry.host}/snapcell/tamper-{which}:base"
    digest = Snapshot.push(str(layout), repo, insecure=True)
    m = manifest_of(layout)
    target_digest = {"memory": m["layers"][0]["digest"], "config": m["config"]["digest"],
                     "manifest": digest}[which]
    data = registry.blob_data(target_digest)
    original = data.read_bytes()
    raw = bytearray(original)
    pos = {"memory": 0x2000 + 17, "config": raw.find(b"guest_sha256") + 20,
           "manifest": raw.find(b"sha256:") + 9}[which]
    raw[pos] = ord("0") if raw[pos] != ord("0") else ord("1")           # same size, still JSON
    data.write_bytes(bytes(raw))
    try:
        fresh = tmp_path / "fresh"
        fds = open_fds()
        with pytest.raises(SnapshotDigestMismatch):
            Snapshot.pull(repo, str(fresh), insecure=True)
        assert not fresh.exists()
        assert open_fds() == fds                    # no descriptor or socket left open
        # an existing layout (without these blobs: blobs already present locally are not
        # downloaded again) is left exactly as it was
        existing = tmp_path / "existing"
        existing.mkdir()
        (existing / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (existing / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
        (existing / "notes").write_text("unrelated")
        before = {p: _sha(existing / p) for p in _files(existing) if (existing / p).is_file()}
        with pytest.raises(SnapshotDigestMismatch):
            Snapshot.pull(repo, str(existing), insecure=True, tag="pulled")
        assert {p: _sha(existing / p) for p in _files(existing)
                if (existing / p).is_file()} == before
        assert _files(existing) == {"oci-layout", "index.json", "notes"}
    finally:
        data.write_bytes(original)          # the registry shares blobs between repositories


def test_push_refuses_a_locally_modified_memory_blob(registry: Registry, layout: Path) -> None:
    mem = blob_path(layout, manifest_of(layout)["layers"][0]["digest"])
    mem.chmod(0o644)
    raw = bytearray(mem.read_bytes())
    raw[0x3000] ^= 0xFF
    mem.write_bytes(bytes(raw))
    with pytest.raises((SnapshotDigestMismatch, SnapshotRegistryError)):
        Snapshot.push(str(layout), f"{registry.host}/snapcell/local-tamper:base", insecure=True)
    r = requests.get(f"http://{registry.host}/v2/snapcell/local-tamper/manifests/base",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=5)
    assert r.status_code == 404                 # no manifest was pushed


# ------------------------------------------------------------------------------ TLS and auth
def test_tls_and_basic_auth(secure_registry: Registry, layout: Path, tmp_path: Path) -> None:
    reg = secure_registry
    repo = f"{reg.host}/snapcell/secure:base"
    creds = {"username": USER, "password": PASSWORD, "ca_file": reg.ca_file}
    digest = Snapshot.push(str(layout), repo, **creds)
    assert digest == index_entry(layout)["digest"]
    assert Snapshot.pull(repo, str(tmp_path / "p"), **creds) == digest
    assert Snapshot.checked_load(str(tmp_path / "p"), "base").digest == digest
    with pytest.raises(SnapshotRegistryError, match="401|auth"):
        Snapshot.pull(repo, str(tmp_path / "q"), username=USER, password="wrong", ca_file=reg.ca_file)
    with pytest.raises(SnapshotRegistryError, match="401|auth"):
        Snapshot.pull(repo, str(tmp_path / "q"), ca_file=reg.ca_file)
    with pytest.raises(SnapshotRegistryError, match="TLS"):
        Snapshot.pull(repo, str(tmp_path / "q"), username=USER, password=PASSWORD)   # untrusted CA
    with pytest.raises(SnapshotRegistryError):
        Snapshot.pull(repo, str(tmp_path / "q"), username=USER, password=PASSWORD, insecure=True)
    assert not (tmp_path / "q").exists()


def test_cli_push_pull(registry: Registry, layout: Path, tmp_path: Path) -> None:
    from snapcell.cli.snapshot import snapshot_group
    runner = CliRunner()
    repo = f"{registry.host}/snapcell/cli:base"
    r = runner.invoke(snapshot_group, ["push", str(layout), repo, "--insecure"])
    assert r.exit_code == 0, r.output
    digest = index_entry(layout)["digest"]
    assert digest in r.output
    r = runner.invoke(snapshot_group, ["pull", repo, str(tmp_path / "c"), "--insecure", "--tag", "x"])
    assert r.exit_code == 0, r.output
    assert oci.entries(str(tmp_path / "c")) == [("x", digest)]
    r = runner.invoke(snapshot_group, ["pull", f"{registry.host}/snapcell/cli:nope",
                                       str(tmp_path / "d"), "--insecure"])
    assert r.exit_code == 1 and "SnapshotNotFound" in r.output
    assert os.path.exists(tmp_path / "c") and not os.path.exists(tmp_path / "d")
