"""Diff-snapshot chains through a real registry (Debian's docker-registry on 127.0.0.1, see
test_registry.py), measured at the wire: a counting TCP proxy between snapcell and the registry
records every byte snapcell sends, and the registry's own storage is counted blob by blob. A
child push sends only its new layer; a cross-repository mount sends no layer bytes; a pull
fetches only missing blobs; sessions pause to and resume from the registry."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapcell import MultiUseSandbox, Snapshot
from snapcell.errors import SnapshotDigestMismatch
from snapcell.snapshot import content, oci

from .conftest import ROOT, make_host_functions
from .test_registry import Registry, registry
from .test_snapshot_chains import grow_chain
from .test_snapshot_files import (
    PYTHON,
    index_entry,
    layout,
    manifest_of,
    small_snapshot,
    template_layout,
)

_ = (layout, small_snapshot, template_layout, registry)


class CountingProxy:
    """A TCP proxy on 127.0.0.1 to `upstream` counting the bytes clients send (`sent`) and
    receive (`received`)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.sent = self.received = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                with self.lock:
                    if outbound:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self) -> None:
        """Zero the counters."""
        with self.lock:
            self.sent = self.received = 0

    def close(self) -> None:
        """Stop accepting."""
        self.closed = True
        self.server.close()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[CountingProxy]:
    """A counting proxy in front of the module's registry."""
    p = CountingProxy(registry.host)
    yield p
    p.close()


def stored_blobs(reg: Registry) -> dict[str, int]:
    """Blob digest -> size in the registry's storage."""
    root = reg.storage / "docker/registry/v2/blobs/sha256"
    return {f"sha256:{p.parent.name}": p.stat().st_size for p in root.glob("*/*/data")} \
        if root.exists() else {}


@pytest.mark.parametrize("depth", [1, 3])
def test_a_child_push_sends_only_its_new_layer(registry: Registry, proxy: CountingProxy,
                                               layout: Path, tmp_path: Path, depth: int) -> None:
    repo = f"{proxy.host}/chains/d{depth}"
    tags = ["base", *grow_chain(layout, depth)]
    before = stored_blobs(registry)
    sizes: list[int] = []
    for i, tag in enumerate(tags):
        proxy.reset()
        Snapshot.push(str(layout), f"{repo}:{tag}", insecure=True)
        m = manifest_of(layout, tag)
        new = m["layers"][-1]["size"] + m["config"]["size"]
        if i == 0:
            full = new
        # HTTP framing and the manifest are small; the old layers are never sent again
        assert new <= proxy.sent <= new + (64 << 10), (tag, proxy.sent, new)
        sizes.append(proxy.sent)
    after = stored_blobs(registry)
    ours = {x["digest"]: x["size"] for t in tags for x in
            [*manifest_of(layout, t)["layers"], manifest_of(layout, t)["config"]]}
    ours.update({e["digest"]: e["size"] for e in map(lambda t: index_entry(layout, t), tags)})
    # the registry holds each layer once (shared by the chain), one config and one manifest
    # per snapshot, and nothing else was added
    assert {d: after[d] for d in ours} == ours
    assert set(after) - set(before) == set(ours) - set(before)
    assert max(sizes[1:], default=0) < full // 2
    # pull the deepest into an empty layout: everything; into one holding the parent: one layer
    fresh = tmp_path / "fresh"
    assert Snapshot.pull(f"{repo}:{tags[-1]}", str(fresh), insecure=True) \
        == oci.entries(str(layout))[-1][1]
    if depth > 1:
        partial = tmp_path / "partial"
        Snapshot.pull(f"{repo}:{tags[-2]}", str(partial), insecure=True)
        proxy.reset()
        Snapshot.pull(f"{repo}:{tags[-1]}", str(partial), insecure=True)
        newest = manifest_of(layout, tags[-1])["layers"][-1]["size"]
        assert newest <= proxy.received <= newest + (64 << 10)
    content.clear()
    for d in (fresh, tmp_path / "partial") if depth > 1 else (fresh,):
        with MultiUseSandbox.from_snapshot(Snapshot.checked_load(str(d), tags[-1]),
                                           host_functions=make_host_functions()) as sb:
            assert sb.call("GetStatic") == 11 + depth


def test_cross_repository_mount_sends_no_layer_bytes(registry: Registry, proxy: CountingProxy,
                                                     layout: Path) -> None:
    grow_chain(layout, 1)
    Snapshot.push(str(layout), f"{proxy.host}/mount/a:g1", insecure=True)
    proxy.reset()
    Snapshot.push(str(layout), f"{proxy.host}/mount/b:g1", insecure=True, mount_from="mount/a")
    layer_bytes = sum(x["size"] for x in manifest_of(layout, "g1")["layers"])
    assert proxy.sent < 16 << 10 < layer_bytes             # requests and the manifest only


def test_pull_of_a_chain_with_a_tampered_layer_changes_nothing(registry: Registry, layout: Path,
                                                               tmp_path: Path) -> None:
    grow_chain(layout, 2)
    repo = f"{registry.host}/chains/tamper"
    Snapshot.push(str(layout), f"{repo}:g2", insecure=True)
    parent_layer = manifest_of(layout, "g2")["layers"][1]["digest"]
    data = registry.blob_data(parent_layer)
    raw = bytearray(data.read_bytes())
    raw[10] ^= 0xFF
    data.write_bytes(bytes(raw))
    target = tmp_path / "t"
    with pytest.raises(SnapshotDigestMismatch):
        Snapshot.pull(f"{repo}:g2", str(target), insecure=True)
    assert not target.exists()


RESUME = """
import sys
from snapcell import MultiUseSandbox
from tests.conftest import make_host_functions
sb = MultiUseSandbox.resume(sys.argv[1], make_host_functions(), directory=sys.argv[2],
                            insecure=True)
print(sb.call("GetStatic"))
"""


def test_sessions_pause_to_and_resume_from_a_registry(registry: Registry, proxy: CountingProxy,
                                                      layout: Path, tmp_path: Path) -> None:
    ref = f"{proxy.host}/sessions/s1:live"
    base = Snapshot.load(str(layout), "base")
    local = tmp_path / "local-session"
    sb = MultiUseSandbox.from_snapshot(base, host_functions=make_host_functions())
    sb.call("AddToStatic", 7)
    sb.pause(ref, directory=str(local), insecure=True)          # first pause: a full snapshot
    first = proxy.sent
    for _ in range(2):
        proxy.reset()
        sb = MultiUseSandbox.resume(ref, make_host_functions(), directory=str(local),
                                    insecure=True)
        assert proxy.received < 64 << 10                        # nothing to pull: all local
        sb.call("AddToStatic", 1)
        proxy.reset()
        sb.pause(ref, directory=str(local), insecure=True)
        assert proxy.sent < first // 2                          # only the new layer
    # another host: an empty session directory, a fresh process
    out = subprocess.run([str(PYTHON), "-c", RESUME, ref, str(tmp_path / "elsewhere")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "20"
