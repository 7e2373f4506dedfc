"""A corpus of malformed snapshot layouts: every one is rejected with a SnapshotError subclass,
leaks no descriptor and maps nothing. Structural mutations of oci-layout, index.json, manifests
and configs, every bounds violation of the config, unsafe files (symlinks, FIFOs, devices,
directories), truncated blobs; then hypothesis mutations of bytes and fields. Format 2: every
structural fault of an extent layer (magic, version, sizes, unaligned / overlapping / unsorted /
unmerged / out-of-range extents), chains with swapped, dropped or repeated layers, and hypothesis
mutations of a chain's layers (in place: checked_load catches them; re-pointed: validation
does)."""

from __future__ import annotations

import base64
import copy
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from snapcell import MultiUseSandbox, Snapshot
from snapcell.errors import (
    SnapcellError,
    SnapshotError,
    SnapshotFormatError,
    SnapshotIncompatibleHost,
    SnapshotNotFound,
)
from snapcell.machine.baselines import feature_table, host_cpu, xsave_component_names
from snapcell.sandbox.pool import kvm
from snapcell.snapshot import layers
from snapcell.snapshot.schema import TOP_KEYS_V3

from .conftest import make_host_functions, open_fds
from .test_snapshot_files import (
    SMALL,
    blob_path,
    canonical,
    config_of,
    index_entry,
    layout,
    manifest_of,
    put_blob,
    read_json,
    set_config,
    set_manifest,
    small_snapshot,
    template_layout,
)

_ = (layout, small_snapshot, template_layout)     # fixtures used by this module
Mutation = Callable[[Path], None]
REF = "org.opencontainers.image.ref.name"


def expect_rejected(layout: Path, error: type[BaseException] = SnapshotFormatError,
                    ref: str = "base") -> None:
    """Both loaders raise `error`; no descriptor leaks and nothing of the layout is mapped."""
    fds = open_fds()
    for loader in (Snapshot.load, Snapshot.checked_load):
        with pytest.raises(error):
            loader(str(layout), ref)
    assert open_fds() == fds
    assert str(layout) not in Path("/proc/self/maps").read_text()


def write(p: Path, data: bytes | str) -> None:
    """Overwrite a (possibly read-only) file."""
    if p.exists() and not p.is_symlink():
        p.chmod(0o644)
    p.write_bytes(data.encode() if isinstance(data, str) else data)


def memory_blob(layout: Path) -> Path:
    """The memory layer of "base"."""
    return blob_path(layout, manifest_of(layout)["layers"][0]["digest"])


def config_blob(layout: Path) -> Path:
    """The config blob of "base"."""
    return blob_path(layout, manifest_of(layout)["config"]["digest"])


def edit_index(fn: Callable[[dict[str, Any]], None]) -> Mutation:
    """Mutate index.json as an object."""
    def m(layout: Path) -> None:
        index = read_json(layout / "index.json")
        fn(index)
        write(layout / "index.json", canonical(index))
    return m


def edit_entry(fn: Callable[[dict[str, Any]], None]) -> Mutation:
    """Mutate the index entry of "base"."""
    return edit_index(lambda index: fn(index["manifests"][0]))


def edit_manifest(fn: Callable[[dict[str, Any]], None]) -> Mutation:
    """Mutate the manifest of "base" (digests re-pointed consistently)."""
    def m(layout: Path) -> None:
        man = manifest_of(layout)
        fn(man)
        set_manifest(layout, man)
    return m


def raw_index(data: bytes | str) -> Mutation:
    """Replace index.json bytes."""
    return lambda layout: write(layout / "index.json", data)


def raw_manifest(data: bytes | str) -> Mutation:
    """Replace the manifest with raw bytes (index re-pointed)."""
    def m(layout: Path) -> None:
        set_manifest(layout, data.encode() if isinstance(data, str) else data)
    return m


def symlink_to_copy(rel: Callable[[Path], Path]) -> Mutation:
    """Replace a file or directory by a symlink to an identical copy."""
    def m(layout: Path) -> None:
        p = rel(layout)
        twin = layout.parent / ("twin-" + p.name)
        if p.is_dir():
            shutil.copytree(p, twin)
            shutil.rmtree(p)
        else:
            shutil.copy(p, twin)
            p.unlink()
        p.symlink_to(twin)
    return m


def fifo(rel: Callable[[Path], Path]) -> Mutation:
    """Replace a file by a FIFO (an open without O_NONBLOCK would hang)."""
    def m(layout: Path) -> None:
        p = rel(layout)
        p.unlink()
        os.mkfifo(p)
    return m


def device(rel: Callable[[Path], Path]) -> Mutation:
    """Replace a file by a character device (/dev/null's numbers), or a FIFO when mknod is not
    permitted here."""
    def m(layout: Path) -> None:
        p = rel(layout)
        p.unlink()
        try:
            os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3))
        except PermissionError:
            os.mkfifo(p)
    return m


def directory(rel: Callable[[Path], Path]) -> Mutation:
    """Replace a file by an empty directory."""
    def m(layout: Path) -> None:
        p = rel(layout)
        p.unlink()
        p.mkdir()
    return m


def resize(rel: Callable[[Path], Path], delta: int) -> Mutation:
    """Truncate or extend a file."""
    def m(layout: Path) -> None:
        p = rel(layout)
        p.chmod(0o644)
        os.truncate(p, p.stat().st_size + delta)
    return m


def second_layer(man: dict[str, Any]) -> None:
    """A manifest with two layers."""
    man["layers"].append(dict(man["layers"][0]))


def dup_tag(index: dict[str, Any]) -> None:
    """Two entries with the same tag."""
    index["manifests"].append(dict(index["manifests"][0]))


def set_tag(tag: object) -> Mutation:
    """Give "base"'s entry another ref.name."""
    def fn(e: dict[str, Any]) -> None:
        e["annotations"] = {REF: tag}
    return edit_entry(fn)


BIG_WS = " " * (1 << 20)
STRUCTURAL: dict[str, tuple[Mutation, type[BaseException]]] = {
    # oci-layout
    "oci-layout missing": (lambda d: (d / "oci-layout").unlink(), SnapshotFormatError),
    "oci-layout malformed": (lambda d: write(d / "oci-layout", "{"), SnapshotFormatError),
    "oci-layout wrong version": (lambda d: write(d / "oci-layout", '{"imageLayoutVersion":"2.0.0"}'),
                                 SnapshotFormatError),
    "oci-layout extra field": (lambda d: write(d / "oci-layout",
                                               '{"imageLayoutVersion":"1.0.0","x":1}'),
                               SnapshotFormatError),
    "oci-layout oversized": (lambda d: write(d / "oci-layout", '{"imageLayoutVersion":"1.0.0"}'
                                             + " " * 5000), SnapshotFormatError),
    "oci-layout symlink": (symlink_to_copy(lambda d: d / "oci-layout"), SnapshotFormatError),
    "oci-layout fifo": (fifo(lambda d: d / "oci-layout"), SnapshotFormatError),
    # index.json
    "index missing": (lambda d: (d / "index.json").unlink(), SnapshotFormatError),
    "index empty file": (raw_index(""), SnapshotFormatError),
    "index malformed": (raw_index('{"schemaVersion":2,"manifests":['), SnapshotFormatError),
    "index not an object": (raw_index("[]"), SnapshotFormatError),
    "index not utf-8": (raw_index(b'{"schemaVersion":2,"manifests":[],"\xff":1}'), SnapshotFormatError),
    "index duplicate key": (raw_index('{"schemaVersion":2,"schemaVersion":2,"manifests":[]}'),
                            SnapshotFormatError),
    "index NaN": (raw_index('{"schemaVersion":NaN,"manifests":[]}'), SnapshotFormatError),
    "index deep nesting": (raw_index('{"schemaVersion":2,"manifests":' + "[" * 100_000
                                     + "]" * 100_000 + "}"), SnapshotFormatError),
    "index huge integer": (raw_index('{"schemaVersion":' + "9" * 5000 + ',"manifests":[]}'),
                           SnapshotFormatError),
    "index oversized": (lambda d: write(d / "index.json", (d / "index.json").read_text() + BIG_WS),
                        SnapshotFormatError),
    "index schemaVersion 1": (edit_index(lambda i: i.update(schemaVersion=1)), SnapshotFormatError),
    "index schemaVersion str": (edit_index(lambda i: i.update(schemaVersion="2")), SnapshotFormatError),
    "index schemaVersion bool": (edit_index(lambda i: i.update(schemaVersion=True)),
                                 SnapshotFormatError),
    "index schemaVersion missing": (edit_index(lambda i: i.pop("schemaVersion")), SnapshotFormatError),
    "index mediaType wrong": (edit_index(lambda i: i.update(mediaType="application/json")),
                              SnapshotFormatError),
    "index unknown field": (edit_index(lambda i: i.update(extra=1)), SnapshotFormatError),
    "index manifests not a list": (edit_index(lambda i: i.update(manifests={})), SnapshotFormatError),
    "index manifests missing": (edit_index(lambda i: i.pop("manifests")), SnapshotFormatError),
    "index entry not an object": (edit_index(lambda i: i["manifests"].append("x")),
                                  SnapshotFormatError),
    "index entry mediaType wrong": (edit_entry(lambda e: e.update(
        mediaType="application/vnd.oci.image.index.v1+json")), SnapshotFormatError),
    "index entry mediaType missing": (edit_entry(lambda e: e.pop("mediaType")), SnapshotFormatError),
    "index entry artifactType wrong": (edit_entry(lambda e: e.update(artifactType="x/y")),
                                       SnapshotFormatError),
    "index entry unknown field": (edit_entry(lambda e: e.update(platform={})), SnapshotFormatError),
    "index entry digest sha512": (edit_entry(lambda e: e.update(
        digest="sha512:" + "0" * 128)), SnapshotFormatError),
    "index entry digest uppercase": (edit_entry(lambda e: e.update(
        digest=e["digest"].upper().replace("SHA256", "sha256"))), SnapshotFormatError),
    "index entry digest short": (edit_entry(lambda e: e.update(digest=e["digest"][:-1])),
                                 SnapshotFormatError),
    "index entry digest traversal": (edit_entry(lambda e: e.update(digest="sha256:../../oci-layout")),
                                     SnapshotFormatError),
    "index entry digest of no blob": (edit_entry(lambda e: e.update(digest="sha256:" + "ab" * 32)),
                                      SnapshotFormatError),
    "index entry size too small": (edit_entry(lambda e: e.update(size=e["size"] - 1)),
                                   SnapshotFormatError),
    "index entry size too large": (edit_entry(lambda e: e.update(size=e["size"] + 1)),
                                   SnapshotFormatError),
    "index entry size zero": (edit_entry(lambda e: e.update(size=0)), SnapshotFormatError),
    "index entry size negative": (edit_entry(lambda e: e.update(size=-1)), SnapshotFormatError),
    "index entry size float": (edit_entry(lambda e: e.update(size=float(e["size"]))),
                               SnapshotFormatError),
    "index entry size bool": (edit_entry(lambda e: e.update(size=True)), SnapshotFormatError),
    "index entry size huge": (edit_entry(lambda e: e.update(size=1 << 70)), SnapshotFormatError),
    "index entry annotations not an object": (edit_entry(lambda e: e.update(annotations=[])),
                                              SnapshotFormatError),
    "index tag not a string": (set_tag(1), SnapshotFormatError),
    "index tag invalid": (set_tag("base/evil"), SnapshotFormatError),
    "index tag empty": (set_tag(""), SnapshotFormatError),
    "index tag duplicated": (edit_index(dup_tag), SnapshotFormatError),
    "index tag absent": (set_tag("other"), SnapshotNotFound),
    "index symlink": (symlink_to_copy(lambda d: d / "index.json"), SnapshotFormatError),
    "index fifo": (fifo(lambda d: d / "index.json"), SnapshotFormatError),
    "index directory": (directory(lambda d: d / "index.json"), SnapshotFormatError),
    # directories
    "blobs symlink": (symlink_to_copy(lambda d: d / "blobs"), SnapshotFormatError),
    "blobs/sha256 symlink": (symlink_to_copy(lambda d: d / "blobs" / "sha256"), SnapshotFormatError),
    "blobs missing": (lambda d: shutil.rmtree(d / "blobs"), SnapshotFormatError),
    # manifest
    "manifest malformed": (raw_manifest("{"), SnapshotFormatError),
    "manifest not an object": (raw_manifest("[]"), SnapshotFormatError),
    "manifest oversized": (raw_manifest("{}" + " " * (65 << 10)), SnapshotFormatError),
    "manifest schemaVersion 1": (edit_manifest(lambda m: m.update(schemaVersion=1)),
                                 SnapshotFormatError),
    "manifest mediaType wrong": (edit_manifest(lambda m: m.update(
        mediaType="application/vnd.docker.distribution.manifest.v2+json")), SnapshotFormatError),
    "manifest mediaType missing": (edit_manifest(lambda m: m.pop("mediaType")), SnapshotFormatError),
    "manifest artifactType wrong": (edit_manifest(lambda m: m.update(artifactType="x/y")),
                                    SnapshotFormatError),
    "manifest artifactType missing": (edit_manifest(lambda m: m.pop("artifactType")),
                                      SnapshotFormatError),
    "manifest unknown field": (edit_manifest(lambda m: m.update(annotations={})), SnapshotFormatError),
    "manifest config mediaType wrong": (edit_manifest(lambda m: m["config"].update(
        mediaType="application/vnd.oci.image.config.v1+json")), SnapshotFormatError),
    "manifest config unknown field": (edit_manifest(lambda m: m["config"].update(urls=[])),
                                      SnapshotFormatError),
    "manifest config size disagrees": (edit_manifest(lambda m: m["config"].update(
        size=m["config"]["size"] + 1)), SnapshotFormatError),
    "manifest config digest of no blob": (edit_manifest(lambda m: m["config"].update(
        digest="sha256:" + "cd" * 32)), SnapshotFormatError),
    "manifest config is the memory": (edit_manifest(lambda m: m.update(
        config={**m["layers"][0], "mediaType": m["config"]["mediaType"]})), SnapshotFormatError),
    "manifest no layers": (edit_manifest(lambda m: m.update(layers=[])), SnapshotFormatError),
    "manifest two layers": (edit_manifest(second_layer), SnapshotFormatError),
    "manifest layers not a list": (edit_manifest(lambda m: m.update(layers=m["layers"][0])),
                                   SnapshotFormatError),
    "manifest layer mediaType wrong": (edit_manifest(lambda m: m["layers"][0].update(
        mediaType="application/vnd.oci.image.layer.v1.tar")), SnapshotFormatError),
    "manifest layer size unaligned": (edit_manifest(lambda m: m["layers"][0].update(
        size=m["layers"][0]["size"] - 1)), SnapshotFormatError),
    "manifest layer size disagrees": (edit_manifest(lambda m: m["layers"][0].update(
        size=m["layers"][0]["size"] + 4096)), SnapshotFormatError),
    "manifest layer size over 1 GiB": (edit_manifest(lambda m: m["layers"][0].update(size=1 << 30)),
                                       SnapshotFormatError),
    "manifest layer digest of no blob": (edit_manifest(lambda m: m["layers"][0].update(
        digest="sha256:" + "ef" * 32)), SnapshotFormatError),
    # config, structurally
    "config malformed": (lambda d: set_config(d, b"{"), SnapshotFormatError),
    "config oversized": (lambda d: set_config(d, b"{}" + b" " * ((1 << 20) + 1)), SnapshotFormatError),
    "config symlink": (symlink_to_copy(config_blob), SnapshotFormatError),
    # the memory blob
    "memory truncated by a page": (resize(memory_blob, -4096), SnapshotFormatError),
    "memory truncated by a byte": (resize(memory_blob, -1), SnapshotFormatError),
    "memory empty": (lambda d: resize(memory_blob, -memory_blob(d).stat().st_size)(d),
                     SnapshotFormatError),
    "memory extended": (resize(memory_blob, 4096), SnapshotFormatError),
    "memory symlink": (symlink_to_copy(memory_blob), SnapshotFormatError),
    "memory fifo": (fifo(memory_blob), SnapshotFormatError),
    "memory device": (device(memory_blob), SnapshotFormatError),
    "memory directory": (directory(memory_blob), SnapshotFormatError),
    "memory missing": (lambda d: memory_blob(d).unlink(), SnapshotFormatError),
}


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_structural_mutation_rejected(layout: Path, name: str) -> None:
    mutate, error = STRUCTURAL[name]
    mutate(layout)
    expect_rejected(layout, error)


# ------------------------------------------------------------------------------ config bounds
def setter(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path (numeric components index lists) in the config."""
    def fn(c: dict[str, Any]) -> None:
        parts = path.split(".")
        node: Any = c
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return fn


def deleter(path: str) -> Callable[[dict[str, Any]], None]:
    """Delete a dotted path."""
    def fn(c: dict[str, Any]) -> None:
        parts = path.split(".")
        node: Any = c
        for p in parts[:-1]:
            node = node[p]
        del node[parts[-1]]
    return fn


def with_config(fn: Callable[[dict[str, Any], dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """A mutation that needs the original values: fn(config, original)."""
    return lambda c: fn(c, copy.deepcopy(c))


def xsave_edit(offset: int, fmt: str, value: int | Callable[[int], int]) -> Callable[[dict[str, Any]], None]:
    """Patch the XSAVE area."""
    def fn(c: dict[str, Any]) -> None:
        area = bytearray(base64.b64decode(c["cpu_state"]["xsave"]))
        old = struct.unpack_from(fmt, area, offset)[0]
        struct.pack_into(fmt, area, offset, value(old) if callable(value) else value)
        c["cpu_state"]["xsave"] = base64.b64encode(bytes(area)).decode()
    return fn


def lay(c: dict[str, Any]) -> dict[str, int]:
    """The config's layout."""
    return dict(c["layout"])


def seg_edit(i: int, **kw: object) -> Callable[[dict[str, Any]], None]:
    """Change fields of segment i."""
    return lambda c: c["segments"][i].update(kw)


def reg(name: str, value: Callable[[dict[str, Any]], int] | object) -> Callable[[dict[str, Any]], None]:
    """Set a register (value may depend on the config)."""
    def fn(c: dict[str, Any]) -> None:
        c["cpu_state"]["registers"][name] = value(c) if callable(value) else value
    return fn


def non_exec_addr(c: dict[str, Any]) -> int:
    """An address inside a non-executable segment."""
    return int(next(s["vaddr"] for s in c["segments"] if "x" not in s["perm"]))


def host_feature_plus(c: dict[str, Any]) -> None:
    """Ask for a CPU feature the host lacks (in the snapshot's baseline)."""
    host = host_cpu(kvm()).features
    lacking = sorted(set(feature_table()) - host)
    assert lacking, "host has every feature snapcell knows"
    c["cpu_baseline"]["features"] = sorted(set(c["cpu_baseline"]["features"]) | {lacking[0]})


def host_xcr0_plus(c: dict[str, Any]) -> None:
    """Ask for an XSAVE component the host lacks (in the snapshot's baseline)."""
    x = host_cpu(kvm()).xcr0
    known = sum(1 << b for b in xsave_component_names())
    c["cpu_baseline"]["xcr0"] |= (~x & known) & -(~x & known)


def xstate_beyond_xcr0(c: dict[str, Any]) -> None:
    """XSTATE_BV with a component outside the snapshot's XCR0."""
    xcr0 = c["cpu_baseline"]["xcr0"]
    xsave_edit(512, "<Q", lambda v: v | (~xcr0 & -~xcr0) & ((1 << 63) - 1))(c)


def mxcsr_outside_mask(c: dict[str, Any]) -> None:
    """MXCSR_MASK without DAZ (bit 6), MXCSR with DAZ set."""
    xsave_edit(28, "<I", 0xFFBF)(c)
    xsave_edit(24, "<I", lambda v: v | (1 << 6))(c)


F = SnapshotFormatError
H = SnapshotIncompatibleHost
BOUNDS: dict[str, tuple[Callable[[dict[str, Any]], None], type[BaseException]]] = {
    **{f"missing {k}": (deleter(k), F) for k in TOP_KEYS_V3},
    "unknown top-level field": (setter("created", "2024-01-01"), F),
    "format_version 4 (newer)": (setter("format_version", 4), F),
    "format_version 1 in a format-2 manifest": (setter("format_version", 1), F),
    "format_version 2 with a format-3 CPU baseline": (setter("format_version", 2), F),
    "format_version 0": (setter("format_version", 0), F),
    "format_version str": (setter("format_version", "1"), F),
    "format_version bool": (setter("format_version", True), F),
    "abi_version 2": (setter("abi_version", 2), H),
    "abi_version negative": (setter("abi_version", -1), F),
    "arch aarch64": (setter("arch", "aarch64"), H),
    "arch empty": (setter("arch", ""), F),
    "arch not a string": (setter("arch", 64), F),
    "hypervisor other": (lambda c: c.update(hypervisor="kvm" if c["hypervisor"] != "kvm" else "kvm-pvm"), H),
    "hypervisor unknown": (setter("hypervisor", "xen"), F),
    "cpu vendor other": (setter("cpu_baseline.vendor", "CentaurHauls"), H),
    "cpu vendor empty": (setter("cpu_baseline.vendor", ""), F),
    "cpu vendor control chars": (setter("cpu_baseline.vendor", "Genuine\nIntel"), F),
    "cpu baseline name empty": (setter("cpu_baseline.name", ""), F),
    "cpu baseline name with a slash": (setter("cpu_baseline.name", "../v3"), F),
    "cpu feature the host lacks": (host_feature_plus, H),
    "cpu feature unknown name": (lambda c: c["cpu_baseline"]["features"].append("zz_unknown"), F),
    "cpu features unsorted": (lambda c: c["cpu_baseline"]["features"].reverse(), F),
    "cpu features repeated": (lambda c: c["cpu_baseline"]["features"].append(
        c["cpu_baseline"]["features"][-1]), F),
    "cpu feature not a string": (lambda c: c["cpu_baseline"]["features"].append(7), F),
    "cpu features not a list": (setter("cpu_baseline.features", {}), F),
    "cpu xcr0 beyond the host": (host_xcr0_plus, H),
    "cpu xcr0 without sse": (setter("cpu_baseline.xcr0", 1), F),
    "cpu xcr0 not an integer": (setter("cpu_baseline.xcr0", "7"), F),
    "cpu xcr0 over 64 bits": (setter("cpu_baseline.xcr0", 1 << 64 | 7), F),
    "cpu xcr0 AVX without the avx feature": (lambda c: c["cpu_baseline"].update(
        features=sorted(set(c["cpu_baseline"]["features"]) - {"avx"}), xcr0=7), F),
    "cpu baseline unknown field": (lambda c: c["cpu_baseline"].update(family=6), F),
    "cpu baseline base field (only for custom files)": (lambda c: c["cpu_baseline"].update(
        base="x86-64-v2"), F),
    **{f"layout {k} off by a page": (with_config(lambda c, o, k=k: c["layout"].update(
        {k: o["layout"][k] + 4096})), F)
       for k in ("elf_end", "input_addr", "input_size", "output_addr", "output_size", "heap_addr",
                 "heap_size", "stack_addr", "stack_size", "memory_size")},
    "layout heap unaligned": (with_config(lambda c, o: c["layout"].update(
        heap_size=o["layout"]["heap_size"] + 1)), F),
    "layout stack below the minimum (consistent)": (with_config(lambda c, o: c["layout"].update(
        stack_size=4096, memory_size=o["layout"]["stack_addr"] + 4096)), F),
    "layout memory over 1 GiB": (with_config(lambda c, o: c["layout"].update(
        heap_size=1 << 30, stack_addr=o["layout"]["heap_addr"] + (1 << 30) + 4096,
        memory_size=o["layout"]["heap_addr"] + (1 << 30) + 4096 + o["layout"]["stack_size"])), F),
    "layout negative": (setter("layout.input_size", -4096), F),
    "layout float": (with_config(lambda c, o: c["layout"].update(
        heap_size=float(o["layout"]["heap_size"]))), F),
    "layout unknown field": (lambda c: c["layout"].update(guard=4096), F),
    "layout missing field": (deleter("layout.heap_addr"), F),
    "segments empty": (setter("segments", []), F),
    "segments not a list": (setter("segments", {}), F),
    "segments too many": (lambda c: c.update(segments=c["segments"] * 17), F),
    "segments unsorted": (lambda c: c["segments"].reverse(), F),
    "segments overlap": (with_config(lambda c, o: c["segments"][1].update(
        vaddr=o["segments"][0]["vaddr"] + o["segments"][0]["memsz"] - 1)), F),
    "segment below GUEST_BASE": (seg_edit(0, vaddr=0x3FF000), F),
    "segment empty": (seg_edit(0, memsz=0), F),
    "segment past elf_end": (with_config(lambda c, o: c["segments"][-1].update(
        memsz=o["layout"]["elf_end"] - o["segments"][-1]["vaddr"] + 1)), F),
    "segment ends a page early": (with_config(lambda c, o: c["segments"][-1].update(
        memsz=max(1, o["layout"]["elf_end"] - 8192 - o["segments"][-1]["vaddr"]))), F),
    "segment perm invalid": (seg_edit(1, perm="rwz"), F),
    "segment perm int": (seg_edit(1, perm=5), F),
    "segment perm write-only": (seg_edit(1, perm="-w-"), F),
    "segment unknown field": (seg_edit(0, align=4096), F),
    "syscall_entry not executable": (lambda c: c.update(syscall_entry=non_exec_addr(c)), F),
    "syscall_entry outside": (setter("syscall_entry", 0x1000), F),
    "rip in a data segment": (reg("rip", non_exec_addr), F),
    "rip on the heap": (reg("rip", lambda c: c["layout"]["heap_addr"]), F),
    "rip in the system area": (reg("rip", 0x4000), F),
    "rsp at stack_top": (reg("rsp", lambda c: c["layout"]["memory_size"]), F),
    "rsp below the stack": (reg("rsp", lambda c: c["layout"]["stack_addr"] - 8), F),
    "rsp misaligned": (reg("rsp", lambda c: c["cpu_state"]["registers"]["rsp"] + 4), F),
    "rsp in the kernel stack": (reg("rsp", 0x13FF8), F),
    "register negative": (reg("rax", -1), F),
    "register over 64 bits": (reg("rbx", 1 << 64), F),
    "register bool": (reg("rcx", True), F),
    "register float": (reg("rdx", 1.0), F),
    "register str": (reg("rsi", "0"), F),
    "register missing": (deleter("cpu_state.registers.r15"), F),
    "register unknown (cr3)": (lambda c: c["cpu_state"]["registers"].update(cr3=0x100000), F),
    "registers not an object": (setter("cpu_state.registers", []), F),
    "fs_base non-canonical": (setter("cpu_state.fs_base", 1 << 47), F),
    "gs_base kernel half": (setter("cpu_state.gs_base", 0xFFFF800000000000), F),
    "cpu_state unknown field (sregs)": (lambda c: c["cpu_state"].update(sregs={}), F),
    "xsave null": (setter("cpu_state.xsave", None), F),
    "xsave not base64": (setter("cpu_state.xsave", "!!!!"), F),
    "xsave short": (lambda c: c["cpu_state"].update(xsave=base64.b64encode(
        base64.b64decode(c["cpu_state"]["xsave"])[:4095]).decode()), F),
    "xsave long": (lambda c: c["cpu_state"].update(xsave=base64.b64encode(
        base64.b64decode(c["cpu_state"]["xsave"]) + b"\0").decode()), F),
    "xsave MXCSR reserved bit": (xsave_edit(24, "<I", lambda v: v | (1 << 20)), F),
    "xsave MXCSR outside its mask": (mxcsr_outside_mask, F),
    "xsave XSTATE_BV beyond XCR0": (xstate_beyond_xcr0, F),
    "xsave XCOMP_BV compacted": (xsave_edit(520, "<Q", (1 << 63) | 0x3), F),
    "xsave reserved header byte": (xsave_edit(540, "<B", 1), F),
    "initialised false": (setter("initialised", False), F),
    "initialised str": (setter("initialised", "true"), F),
    "initialised 1": (setter("initialised", 1), F),
    "functions not a list": (setter("functions", {}), F),
    "function entry short": (lambda c: c["functions"].append(["X", []]), F),
    "function duplicate": (lambda c: c["functions"].append(list(c["functions"][0])), F),
    "function type unknown": (lambda c: c["functions"].append(["X", ["i128"], "i32"]), F),
    "function void parameter": (lambda c: c["functions"].append(["X", ["void"], "i32"]), F),
    "function name empty": (lambda c: c["functions"].append(["", [], "i32"]), F),
    "function name too long": (lambda c: c["functions"].append(["x" * 257, [], "i32"]), F),
    "function name lone surrogate": (lambda c: c["functions"].append(["\ud800", [], "i32"]), F),
    "function too many params": (lambda c: c["functions"].append(["X", ["i32"] * 17, "i32"]), F),
    "functions too many": (lambda c: c.update(functions=[[f"f{i}", [], "i32"] for i in range(257)]), F),
    "host function malformed": (lambda c: c["host_functions"].append(["X", "i32", "i32"]), F),
    "host function duplicate": (lambda c: c["host_functions"].append(list(c["host_functions"][0])), F),
    "generation zero": (setter("generation", 0), F),
    "generation 2**63": (setter("generation", 1 << 63), F),
    "generation bool": (setter("generation", True), F),
    "guest_sha256 uppercase": (lambda c: c.update(guest_sha256=c["guest_sha256"].upper()), F),
    "guest_sha256 short": (setter("guest_sha256", "abc"), F),
    "memory size disagrees": (with_config(lambda c, o: c["memory"].update(
        size=o["memory"]["size"] + 4096)), F),
    "memory base wrong": (setter("memory.base", 0), F),
    "memory unknown field": (lambda c: c["memory"].update(sparse=True), F),
}


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_config_bounds_rejected(layout: Path, name: str) -> None:
    mutate, error = BOUNDS[name]
    c = config_of(layout)
    mutate(c)
    set_config(layout, c)
    expect_rejected(layout, error)


def test_the_unmutated_config_round_trips(layout: Path) -> None:
    set_config(layout, config_of(layout))          # the helpers themselves change nothing
    assert Snapshot.checked_load(str(layout), "base").generation == 1


def test_rflags_are_sanitised_not_rejected(layout: Path) -> None:
    c = config_of(layout)
    c["cpu_state"]["registers"]["rflags"] = 0xFFFF_FFFF_FFFF_FFFF    # TF, IF, IOPL, NT, VM...
    set_config(layout, c)
    snap = Snapshot.checked_load(str(layout), "base")
    assert snap.cpu.rflags == 0xCD5 | 0x2                   # CF PF AF ZF SF DF OF | bit 1
    c["cpu_state"]["registers"]["rflags"] = 0x206
    set_config(layout, c)
    snap = Snapshot.checked_load(str(layout), "base")
    assert snap.cpu.rflags == 0x6
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        assert sb.call("EchoI32", 3) == 3 and sb.call("GetStatic") == 11


def test_privileged_state_is_never_read_from_the_file(layout: Path) -> None:
    """Nothing but user state is in the config, and the image starts at GUEST_BASE: the system
    area (page tables, GDT, IDT, TSS) has no place in the format."""
    c = config_of(layout)
    assert set(c["cpu_state"]) == {"registers", "fs_base", "gs_base", "xsave"}
    assert c["memory"]["base"] == 0x400000
    assert set(c["cpu_state"]["registers"]) == {
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip", "rflags"}


# ------------------------------------------------------------------------------ hypothesis
FILES = ("oci-layout", "index.json", "manifest", "config", "memory")


def _path_of(d: Path, which: str) -> Path:
    if which in ("oci-layout", "index.json"):
        return d / which
    if which == "manifest":
        return blob_path(d, index_entry(d)["digest"])
    if which == "config":
        return config_blob(d)
    return memory_blob(d)


def _fresh_copy(template: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="snapcell-fuzz-")) / "l"
    shutil.copytree(template, d)
    return d


def _run(d: Path, loader: Callable[[str, str], Snapshot], contained: bool,
         ref: str = "base") -> str:
    """Load and call. Returns an outcome label; raises on anything unacceptable."""
    try:
        snap = loader(str(d), ref)
    except SnapshotError:
        return "rejected"
    try:
        sb = MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions(),
                                           config=SMALL.replace(max_execution_time=0.5))
    except SnapshotError:
        return "rejected late"
    try:
        result = sb.call("EchoI32", 1234)
    except SnapcellError:
        if not contained:
            raise
        return "guest misbehaved (contained)"
    finally:
        sb.close()
    if not contained:
        assert result == 1234
    return "ran"


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.sampled_from(FILES), data=st.data())
def test_hypothesis_byte_mutations(template_layout: Path, which: str, data: st.DataObject) -> None:
    """Bytes flipped, truncated or inserted anywhere: checked_load rejects it (SnapshotError) or
    the layout still describes the same snapshot and runs correctly."""
    d = _fresh_copy(template_layout)
    try:
        p = _path_of(d, which)
        p.chmod(0o644)
        raw = bytearray(p.read_bytes())
        kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            raw[pos] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        p.write_bytes(bytes(raw))
        event(_run(d, Snapshot.checked_load, contained=False))
    finally:
        shutil.rmtree(d.parent)


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, 1, -1, 4096, 4095, 0x400000, 1 << 30, 1 << 47, (1 << 63) - 1, 1 << 63,
                     (1 << 64) - 1, 1 << 64]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _leaves(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _leaves(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:4]):
            out += _leaves(v, prefix + (i,))
    return out


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hypothesis_field_mutations(template_layout: Path, data: st.DataObject) -> None:
    """A field of the config, manifest or index replaced, deleted or added, with every digest
    re-computed so that only validation stands in the way: a SnapshotError, or a snapshot that
    loads and runs — the guest may misbehave on a state that is valid but different (a register
    value, say), which the sandbox contains as a SnapcellError; never another exception, a crash
    or a hang."""
    d = _fresh_copy(template_layout)
    try:
        which = data.draw(st.sampled_from(["config", "config", "config", "manifest", "index"]))
        doc = {"config": config_of, "manifest": manifest_of,
               "index": lambda d: read_json(d / "index.json")}[which](d)
        path = data.draw(st.sampled_from(_leaves(doc)))
        parent: Any = doc
        for k in path[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(JSON_VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=8))] = data.draw(JSON_VALUES)
        else:
            parent.append(data.draw(JSON_VALUES))
        if which == "config":
            set_config(d, doc)
        elif which == "manifest":
            set_manifest(d, doc)
        else:
            (d / "index.json").write_bytes(canonical(doc))
        event(f"{which}: " + _run(d, Snapshot.checked_load, contained=True))
    finally:
        shutil.rmtree(d.parent)


def test_fuzz_helpers_accept_the_pristine_layout(template_layout: Path) -> None:
    d = _fresh_copy(template_layout)
    try:
        assert _run(d, Snapshot.checked_load, contained=False) == "ran"
        put_blob(d, b"unrelated")                      # an unreferenced blob is fine
        assert _run(d, Snapshot.load, contained=False) == "ran"
    finally:
        shutil.rmtree(d.parent)


# ------------------------------------------------------------------------------ format 2 layers
# A memory layer is data + extent table + footer (snapcell.snapshot.layers). These mutations
# rebuild a *valid-looking* blob (digest and size re-pointed in the manifest) so that only the
# layer's own validation stands in the way, for load and checked_load alike.
Layer = dict[str, Any]


def parse_layer(raw: bytes) -> Layer:
    """The parts of a layer blob: data, extents, footer fields."""
    magic, version, n, size, data_bytes = layers.FOOTER.unpack_from(raw, len(raw) - layers.FOOTER.size)
    table = raw[len(raw) - layers.FOOTER.size - n * 16:len(raw) - layers.FOOTER.size]
    extents = [list(layers.EXTENT.unpack_from(table, i * 16)) for i in range(n)]
    return {"data": bytearray(raw[:data_bytes]), "extents": extents, "magic": magic,
            "version": version, "n": n, "size": size, "data_bytes": data_bytes}


def build_layer(p: Layer) -> bytes:
    """A layer blob from (possibly inconsistent) parts."""
    table = b"".join(layers.EXTENT.pack(a % (1 << 64), n % (1 << 64)) for a, n in p["extents"])
    return bytes(p["data"]) + table + layers.FOOTER.pack(p["magic"], p["version"], p["n"],
                                                         p["size"], p["data_bytes"])


def edit_layer(fn: Callable[[Layer], None], index: int = -1, consistent: bool = True) -> Mutation:
    """Rewrite memory layer `index` of "base" through `fn` (n and data_bytes recomputed unless
    `consistent` is False) and re-point the manifest at the new blob."""
    def m(d: Path) -> None:
        man = manifest_of(d)
        desc = man["layers"][index]
        p = parse_layer(blob_path(d, desc["digest"]).read_bytes())
        fn(p)
        if consistent:
            p["n"] = len(p["extents"])
            p["data_bytes"] = len(p["data"])
        digest, size = put_blob(d, build_layer(p))
        repoint_layer(d, "base", index, digest, size)
    return m


def repoint_layer(d: Path, tag: str, index: int, digest: str, size: int) -> None:
    """Make layer `index` of `tag` the blob `digest` in the manifest and in the config's
    memory.layers (every digest consistent: only validation can object)."""
    man = manifest_of(d, tag)
    man["layers"][index].update(digest=digest, size=size)
    set_manifest(d, man, tag)
    cfg = config_of(d, tag)
    cfg["memory"]["layers"][index] = digest
    set_config(d, cfg, tag)


def _split_first(p: Layer) -> None:
    """Two adjacent extents instead of one (the table must be merged)."""
    a, n = p["extents"][0]
    if n < 2 * 4096:
        p["extents"][0:1] = [[a, 4096], [a + 4096, 4096]]
        p["data"][4096 * 1:4096 * 1] = bytes(4096)
    else:
        p["extents"][0:1] = [[a, 4096], [a + 4096, n - 4096]]


LAYER_MUTATIONS: dict[str, Mutation] = {
    "layer bad magic": edit_layer(lambda p: p.update(magic=b"SNAPCEXX")),
    "layer version 2 (newer)": edit_layer(lambda p: p.update(version=2)),
    "layer for a bigger image": edit_layer(lambda p: p.update(size=p["size"] + 4096)),
    "layer for a smaller image": edit_layer(lambda p: p.update(size=p["size"] - 4096)),
    "layer extent count huge": edit_layer(lambda p: p.update(n=1 << 31), consistent=False),
    "layer extent count one more": edit_layer(lambda p: p.update(n=p["n"] + 1), consistent=False),
    "layer data bytes one page more": edit_layer(lambda p: p.update(data_bytes=p["data_bytes"] + 4096),
                                                 consistent=False),
    "layer data bytes off by one": edit_layer(lambda p: p.update(data_bytes=p["data_bytes"] - 1),
                                              consistent=False),
    "layer extent unaligned offset": edit_layer(lambda p: p["extents"][0].__setitem__(
        0, p["extents"][0][0] + 1)),
    "layer extent unaligned length": edit_layer(lambda p: p["extents"][0].__setitem__(
        1, p["extents"][0][1] - 1)),
    "layer extent empty": edit_layer(lambda p: p["extents"].insert(0, [0, 0])),
    "layer extents overlap": edit_layer(lambda p: (p["extents"].append(list(p["extents"][-1])),
                                                   p["data"].extend(bytes(p["extents"][-1][1])))),
    "layer extents unsorted": edit_layer(lambda p: (
        p["extents"].insert(0, [p["extents"][-1][0] + p["extents"][-1][1], 4096]),
        p["data"].extend(bytes(4096)))),
    "layer extents adjacent (unmerged)": edit_layer(_split_first),
    "layer extent beyond the image": edit_layer(lambda p: (p["extents"].append([p["size"], 4096]),
                                                           p["data"].extend(bytes(4096)))),
    "layer extent wraps around": edit_layer(lambda p: (p["extents"].append([(1 << 64) - 4096, 8192]),
                                                       p["data"].extend(bytes(8192)))),
    "layer data longer than the extents": edit_layer(lambda p: p["data"].extend(bytes(4096)),
                                                     consistent=False),
    "layer footer only, wrong sizes": edit_layer(lambda p: p.update(data=bytearray(), extents=[]),
                                                 consistent=False),
}


@pytest.mark.parametrize("name", sorted(LAYER_MUTATIONS))
def test_layer_mutation_rejected(layout: Path, name: str) -> None:
    LAYER_MUTATIONS[name](layout)
    expect_rejected(layout)


def test_layer_blob_too_small_for_a_footer(layout: Path) -> None:
    digest, size = put_blob(layout, b"SNAPCEXT")
    repoint_layer(layout, "base", 0, digest, size)
    expect_rejected(layout)


def test_an_empty_child_layer_is_valid(layout: Path) -> None:
    """A child that changed nothing: a layer of just a footer, on top of the base."""
    man = manifest_of(layout)
    base = parse_layer(blob_path(layout, man["layers"][0]["digest"]).read_bytes())
    empty = {**base, "data": bytearray(), "extents": [], "n": 0, "data_bytes": 0}
    digest, size = put_blob(layout, build_layer(empty))
    man["layers"].append({**man["layers"][0], "digest": digest, "size": size})
    set_manifest(layout, man)
    cfg = config_of(layout)
    cfg["memory"]["layers"].append(digest)
    set_config(layout, cfg)
    snap = Snapshot.checked_load(str(layout), "base")
    with MultiUseSandbox.from_snapshot(snap, host_functions=make_host_functions()) as sb:
        assert sb.call("GetStatic") == 11


@pytest.fixture(scope="session")
def chain_template(tmp_path_factory: pytest.TempPathFactory, template_layout: Path) -> Path:
    """The template plus "child" (a sandbox from "base" after AddToStatic(1): a 2-layer diff)."""
    d = tmp_path_factory.mktemp("chain") / "layout"
    shutil.copytree(template_layout, d)
    with MultiUseSandbox.from_snapshot(Snapshot.load(str(d), "base"),
                                       host_functions=make_host_functions()) as sb:
        sb.call("AddToStatic", 1)
        sb.snapshot().save(str(d), "child")
    assert len(manifest_of(d, "child")["layers"]) == 2
    return d


def test_chain_mutations(chain_template: Path, tmp_path: Path) -> None:
    """Layers swapped, the base dropped, a foreign layer appended, the parent field pointing
    elsewhere: each refused (the parent is in the layout, so the chain is checked)."""
    cases: dict[str, Callable[[dict[str, Any]], None]] = {
        "swapped": lambda m: m["layers"].reverse(),
        "base dropped": lambda m: m["layers"].pop(0),
        "layer repeated": lambda m: m["layers"].append(dict(m["layers"][0])),
    }
    for name, fn in cases.items():
        d = tmp_path / name.replace(" ", "-")
        shutil.copytree(chain_template, d)
        m = manifest_of(d, "child")
        fn(m)
        set_manifest(d, m, "child")
        expect_rejected(d, ref="child")           # the config names other layers
        cfg = config_of(d, "child")               # consistent config too: the lineage check
        cfg["memory"]["layers"] = [x["digest"] for x in m["layers"]]
        set_config(d, cfg, "child")
        if name != "base dropped":                # (a 1-layer snapshot may name a parent: flatten)
            expect_rejected(d, ref="child")


def _tail_mutation(raw: bytearray, data: st.DataObject) -> None:
    """Flip, set, cut or grow bytes in the last 64 bytes of a layer (table and footer)."""
    kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert"]))
    pos = data.draw(st.integers(max(0, len(raw) - 64), len(raw) - 1))
    if kind == "flip":
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "set":
        raw[pos] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        del raw[pos:]
    else:
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.sampled_from([0, 1]), repoint=st.booleans(), data=st.data())
def test_hypothesis_chain_layer_mutations(chain_template: Path, which: int, repoint: bool,
                                          data: st.DataObject) -> None:
    """Bytes of a chain's layer tables/footers or data mutated. With the digests left alone,
    checked_load rejects every change; with the manifest re-pointed at the mutated blob (so only
    validation stands in the way), both loaders reject it or the snapshot runs contained."""
    d = _fresh_copy(chain_template)
    try:
        man = manifest_of(d, "child")
        desc = man["layers"][which]
        p = blob_path(d, desc["digest"])
        raw = bytearray(p.read_bytes())
        if data.draw(st.booleans()):
            _tail_mutation(raw, data)
        else:
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        if repoint:
            digest, size = put_blob(d, bytes(raw))
            repoint_layer(d, "child", which, digest, size)
            for loader in (Snapshot.load, Snapshot.checked_load):
                event(f"layer {which} re-pointed: " + _run(d, loader, contained=True, ref="child"))
        else:
            p.chmod(0o644)
            p.write_bytes(bytes(raw))
            event(f"layer {which} in place: " + _run(d, Snapshot.checked_load, contained=False,
                                                    ref="child"))
    finally:
        shutil.rmtree(d.parent)
