"""The snapshot config schema and the OCI structures, without KVM: canonical encoding, strict
decoding, bounds, XSAVE checks, tags, references; hypothesis never gets anything but
SnapshotFormatError out of the parsers."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.errors import SnapshotFormatError, SnapshotNotFound, SnapshotReferenceError, SnapshotStateError
from snapcell.guest.functions import Signature
from snapcell.guest.values import ValueType
from snapcell.kvm.structs import GPR_NAMES
from snapcell.machine.baselines import named
from snapcell.machine.layout import GUEST_BASE, MemoryLayout, Perm, Segment
from snapcell.machine.memory import MemoryImage
from snapcell.sandbox.snapshot import CpuState, Snapshot
from snapcell.snapshot import schema, validate
from snapcell.snapshot.registry import parse_reference

ELF_END = 0x428000
LAYOUT = MemoryLayout.compute(ELF_END, 16 << 10, 16 << 10, 64 << 10, 32 << 10)
SEGMENTS = (Segment(0x400000, 0x190, Perm.R), Segment(0x401000, 0x10000, Perm.R | Perm.X),
            Segment(0x412000, 0x15123, Perm.R | Perm.W))
BASELINE = named("x86-64-v3")


def xsave(mxcsr: int = 0x1F80, mask: int = 0xFFFF, xstate_bv: int = 0x3, xcomp_bv: int = 0) -> bytes:
    """A plausible standard-format XSAVE area."""
    area = bytearray(4096)
    struct.pack_into("<HII", area, 0, 0x37F, 0, 0)
    struct.pack_into("<II", area, 24, mxcsr, mask)
    struct.pack_into("<QQ", area, 512, xstate_bv, xcomp_bv)
    return bytes(area)


def snapshot(**changes: Any) -> Snapshot:
    """A synthetic initialised snapshot (a real sealed memfd, no KVM)."""
    image = MemoryImage(LAYOUT.memory_size - GUEST_BASE)
    image.write_chunks([(0, b"\x7fELF")])
    image.seal()
    regs = dict.fromkeys(GPR_NAMES, 0)
    regs.update(rip=0x401234, rsp=LAYOUT.stack_top - 0x1A0, rflags=0x246, rbx=7)
    fields: dict[str, Any] = dict(
        image=image, layout=LAYOUT, segments=SEGMENTS, syscall_entry=0x402000,
        cpu=CpuState(tuple(regs[n] for n in GPR_NAMES), 0x430000, 0, xsave()), initialised=True,
        functions={"Echo": Signature((ValueType.STR,), ValueType.STR),
                   "NoOp": Signature((), ValueType.VOID)},
        host_functions={"HostPrint": Signature((ValueType.STR,), ValueType.I32)},
        generation=3, guest_sha256="ab" * 32, cpu_baseline=BASELINE, hypervisor="kvm-pvm")
    fields.update(changes)
    return Snapshot(**fields)


def doc() -> dict[str, Any]:
    """The config document of the synthetic snapshot."""
    return dict(json.loads(schema.encode_config(snapshot())))


def test_round_trip_and_canonical_bytes() -> None:
    snap = snapshot()
    data = schema.encode_config(snap)
    assert data == schema.encode_config(snap)
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    cfg = schema.decode_config(data)
    assert cfg.layout == snap.layout and cfg.segments == snap.segments
    assert cfg.functions == snap.functions and cfg.host_functions == snap.host_functions
    assert cfg.cpu.regs[:-1] == snap.cpu.regs[:-1] and cfg.cpu.rflags == 0x246 & ~0x200
    assert cfg.cpu.xsave == snap.cpu.xsave and cfg.cpu.fs_base == 0x430000
    assert cfg.cpu_baseline == BASELINE and cfg.format_version == 3
    assert cfg.memory_size == LAYOUT.memory_size - GUEST_BASE
    again = cfg.to_snapshot(snap.image, "sha256:" + "0" * 64)
    assert schema.encode_config(again) == data            # re-saving gives the same bytes


def test_unsavable_snapshots() -> None:
    with pytest.raises(SnapshotStateError):
        schema.encode_config(snapshot(initialised=False, functions=None, host_functions=None))
    with pytest.raises(SnapshotStateError):                    # rsp outside the stack
        regs = list(snapshot().cpu.regs)
        regs[GPR_NAMES.index("rsp")] = 0x1000
        schema.encode_config(snapshot(cpu=CpuState(tuple(regs), 0, 0, xsave())))


@pytest.mark.parametrize("flags, kept", [(0x2, 0x2), (0x246, 0x46), (0x302, 0x2),
                                         ((1 << 64) - 1, 0xCD7), (0x4D5, 0x4D7)])
def test_rflags_sanitised(flags: int, kept: int) -> None:
    assert schema.sanitize_rflags(flags) == kept


def test_xsave_checks() -> None:
    schema.check_xsave(xsave(), (0x7,))
    schema.check_xsave(xsave(mask=0), (0x7,))                   # 0 means the default mask
    with pytest.raises(SnapshotFormatError, match="MXCSR"):
        schema.check_xsave(xsave(mxcsr=0x1F80 | 1 << 17, mask=0x2FFFF), (0x7,))   # AMD MM bit
    with pytest.raises(SnapshotFormatError, match="MXCSR"):
        schema.check_xsave(xsave(mxcsr=0x1FC0, mask=0xFFBF), (0x7,))
    with pytest.raises(SnapshotFormatError, match="XSTATE_BV"):
        schema.check_xsave(xsave(xstate_bv=0x7), (0x7, 0x3))    # beyond the host's XCR0
    with pytest.raises(SnapshotFormatError, match="XCOMP_BV"):
        schema.check_xsave(xsave(xcomp_bv=1 << 63), (0x7,))
    with pytest.raises(SnapshotFormatError):
        schema.check_xsave(xsave()[:-1], (0x7,))


def test_host_xcr0_bounds_the_xsave_state() -> None:
    data = schema.encode_config(snapshot(cpu=CpuState(snapshot().cpu.regs, 0, 0, xsave(xstate_bv=7))))
    schema.decode_config(data)
    with pytest.raises(SnapshotFormatError, match="XSTATE_BV"):
        schema.decode_config(data, host_xcr0=0x3)


@pytest.mark.parametrize("text", [
    b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b"[" * 50_000,
    b'{"a":' + b"1" * 5000 + b"}", b"\xff\xfe", b"", b"{", b'{"a":1}x'])
def test_strict_json(text: bytes) -> None:
    with pytest.raises(SnapshotFormatError):
        schema.loads_strict(text, "x", 1 << 20)


def test_json_cap_is_checked_before_parsing() -> None:
    with pytest.raises(SnapshotFormatError, match="at most"):
        schema.loads_strict(b"{}" + b" " * 100, "x", 64)


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A-b_c.d", "x" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate.check_tag(tag) == tag and validate.check_ref(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a/b", "a:b", "x" * 129, "ä", "a b", 1, None])
def test_invalid_tags(tag: object) -> None:
    with pytest.raises(SnapshotReferenceError):
        validate.check_tag(tag)


def test_refs() -> None:
    d = "sha256:" + "0f" * 32
    assert validate.check_ref(d) == d
    for bad in ("sha256:" + "0F" * 32, "sha256:00", "sha512:" + "0" * 128):
        with pytest.raises(SnapshotReferenceError):
            validate.check_ref(bad)


def test_manifest_and_index_round_trip() -> None:
    cfg1 = validate.Descriptor(validate.MT_CONFIG_V1, "sha256:" + "1" * 64, 100)
    mem = validate.Descriptor(validate.MT_MEMORY, "sha256:" + "2" * 64, 8192)
    m = validate.parse_manifest(validate.manifest_bytes(cfg1, mem))             # format 1
    assert (m.config, m.layers, m.version) == (cfg1, (mem,), 1)
    cfg = validate.Descriptor(validate.MT_CONFIG, "sha256:" + "1" * 64, 100)
    chain = tuple(validate.Descriptor(validate.MT_LAYER, f"sha256:{i}" + "4" * 63, 32 + 4096 * i)
                  for i in range(3))
    m = validate.parse_manifest(validate.manifest_bytes(cfg, chain))            # format 2
    assert (m.config, m.layers, m.version, m.layer) == (cfg, chain, 2, chain[-1])
    with pytest.raises(SnapshotFormatError, match="cycle"):
        validate.parse_manifest(validate.manifest_bytes(cfg, chain + chain[:1]))
    with pytest.raises(SnapshotFormatError, match="newer snapcell"):
        validate.parse_manifest(validate.manifest_bytes(cfg, chain).replace(
            b"snapcell.snapshot.v2", b"snapcell.snapshot.v3"))
    with pytest.raises(SnapshotFormatError, match="format-1 snapshot manifest"):
        validate.parse_manifest(validate.manifest_bytes(cfg1, (mem, mem)))
    man = validate.Descriptor(validate.MT_MANIFEST, "sha256:" + "3" * 64, 400)
    entries = [validate.index_entry(man, "a"), validate.index_entry(man, None)]
    parsed = validate.parse_index(validate.index_bytes(entries))
    assert [(e.tag, e.descriptor) for e in parsed] == [("a", man), (None, man)]
    assert validate.resolve(parsed, "a").tag == "a"
    assert validate.resolve(parsed, man.digest).descriptor == man
    with pytest.raises(SnapshotNotFound):
        validate.resolve(parsed, "b")
    validate.parse_oci_layout(b'{"imageLayoutVersion":"1.0.0"}')


@pytest.mark.parametrize("ref, parts", [
    ("127.0.0.1:5000/a:b", ("127.0.0.1:5000", "a", "b", None)),
    ("localhost/x/y", ("localhost", "x/y", None, None)),
    ("reg.example.com/team/snap-shots__v2:t_1", ("reg.example.com", "team/snap-shots__v2", "t_1", None)),
    ("[::1]:5000/a@sha256:" + "0" * 64, ("[::1]:5000", "a", None, "sha256:" + "0" * 64)),
])
def test_registry_references(ref: str, parts: tuple[object, ...]) -> None:
    r = parse_reference(ref)
    assert (r.host, r.repository, r.tag, r.digest) == parts
    assert str(r) == ref


@pytest.mark.parametrize("ref", ["a/b:c", "docker.io", "host:5000/", "host:5000/A", "h.x/a:-t",
                                 "h.x/a//b", "h.x/a:" + "t" * 129, "https://h.x/a", "h.x/a b"])
def test_bad_registry_references(ref: str) -> None:
    with pytest.raises(SnapshotReferenceError):
        parse_reference(ref)


# ------------------------------------------------------------------------------ hypothesis
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 66), 1 << 66) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += _paths(v, prefix + (i,))
    return out


BASE_DOC = doc()
PATHS = _paths(BASE_DOC)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), json_values, st.booleans())
def test_decode_config_only_raises_format_errors(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    d = json.loads(json.dumps(BASE_DOC))
    node = d
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    try:
        cfg = schema.decode_config(json.dumps(d).encode())
    except SnapshotFormatError:
        return
    # accepted: everything it says is within bounds
    assert cfg.layout.stack_addr <= cfg.cpu.rsp < cfg.layout.stack_top
    assert cfg.memory_size == cfg.layout.memory_size - GUEST_BASE


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_only_raise_format_errors_on_bytes(data: bytes) -> None:
    for parse in (validate.parse_index, validate.parse_manifest, validate.parse_oci_layout,
                  schema.decode_config):
        try:
            parse(data)
        except SnapshotFormatError:
            pass


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_parsers_only_raise_format_errors_on_json(value: Any) -> None:
    data = json.dumps(value).encode()
    for parse in (validate.parse_index, validate.parse_manifest, schema.decode_config):
        try:
            parse(data)
        except SnapshotFormatError:
            pass


def test_xsave_in_document_is_base64_of_4096_bytes() -> None:
    assert len(base64.b64decode(BASE_DOC["cpu_state"]["xsave"])) == 4096
