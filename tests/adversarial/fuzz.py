"""Mutation fuzzers for what a guest and a snapshot file can hand the host.

- ``messages``: the adversary guest writes mutated bytes into its output buffer and exits on
  the result, host-call or abort port (the real path: KVM exit, framing, MessagePack decoding,
  type checks against the declared signatures, host-function dispatch).
- ``snapshots``: mutated OCI layouts — JSON fields changed and re-digested so that the
  mutation reaches deep validation, raw byte flips, truncated and extended blobs — loaded with
  `Snapshot.load` / `checked_load`, in both load modes (copy, and map: format-2 layers mapped
  copy-on-write), and run when accepted.

Invariant: the host only ever raises snapcell errors, host functions only ever see arguments of
their declared types, no descriptor leaks, and a sandbox restored after any mutation computes
the fresh-VM fingerprint. ``make fuzz`` runs both for a bounded time and prints mutations per
minute; the test suite runs a short slice (tests/adversarial/test_fuzz.py).

    python -m tests.adversarial.fuzz --seconds 300 [--target messages|snapshots|responses] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from snapcell import HostFunctions, MultiUseSandbox, SandboxConfiguration, SnapcellError, Snapshot
from snapcell.types import I32

FUZZ_CONFIG = SandboxConfiguration(heap_size=1 << 20, input_size=64 << 10, output_size=64 << 10)
PORTS = (0x10, 0x11, 0x13)


@dataclass
class Stats:
    """What a fuzzing run did."""

    target: str
    mutations: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)

    @property
    def per_minute(self) -> float:
        """Mutations per minute."""
        return self.mutations * 60 / self.seconds if self.seconds else 0.0

    def count(self, outcome: str) -> None:
        """Count one outcome."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def line(self) -> str:
        """One-line summary."""
        top = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: -kv[1])[:6])
        return (f"{self.target}: {self.mutations} mutations in {self.seconds:.1f} s "
                f"({self.per_minute:,.0f}/min), {len(self.crashes)} crashes; {top}")


# ------------------------------------------------------------------------ byte mutations
def _random_obj(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "neg", "big", "float", "str", "bytes", "none", "bool", "list", "map"]
    k = rng.choice(kinds if depth < 4 else kinds[:8])
    if k == "int":
        return rng.randint(0, 300)
    if k == "neg":
        return -rng.randint(1, 2**63)
    if k == "big":
        return rng.randint(2**31, 2**64 - 1)
    if k == "float":
        return rng.choice([0.0, -0.0, 1.5, float("inf"), float("nan"), 3.4e38, 1e308])
    if k == "str":
        return "".join(rng.choice("ab\u00e9\u4e2d\U0001f600\x00") for _ in range(rng.randint(0, 20)))
    if k == "bytes":
        return rng.randbytes(rng.randint(0, 40))
    if k == "none":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "list":
        return [_random_obj(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {str(rng.randint(0, 9)): _random_obj(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def message_seeds() -> list[bytes]:
    """Valid and near-valid messages of each kind the host reads."""
    pack = msgpack.packb
    seeds = [pack([0, None]), pack([0, 5]), pack([0, 2**64 - 1]), pack([1, 3, "error"]),
             pack(["Echo", [7], "i32"]), pack(["Echo", [2**40], "i32"]), pack(["Nope", [], "void"]),
             pack(["Echo", [], "i32"]), pack([3, "abort message"]), pack([-1, "x" * 5000]),
             pack(["HostPrint", ["hi"], "i32"]), pack([0, {"a": [1, 2]}]),
             b"\x91" * 5000 + b"\xc0", b"\xdd\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff",
             b"\xc6\xff\xff\xff\xff", b"\xc7\xff\x01", b"\xcf" + b"\xff" * 8]
    return [_frame(s) for s in seeds]


def mutate_bytes(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One or a few random edits of `data`."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(10)
        if op == 0 and b:
            i = rng.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, 0xC0, 0xC1, rng.randrange(256)))
        elif op == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and len(b) > 1:
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 16)]
        elif op == 4 and len(b) >= 4:                 # the frame length
            n = rng.choice((0, 1, len(b), len(b) - 3, len(b) + 1, 2**31 - 1, 2**32 - 1,
                            rng.randrange(2**32)))
            b[0:4] = struct.pack("<I", n)
        elif op == 5 and b:
            del b[rng.randrange(len(b)):]
        elif op == 6:
            other = rng.choice(pool)
            i, j = rng.randrange(len(b) + 1), rng.randrange(len(other) + 1)
            b = b[:i] + other[j:]
        elif op == 7:
            b = bytearray(_frame(msgpack.packb(_random_obj(rng))))
        elif op == 8:
            head = rng.choice([[0, _random_obj(rng)], [1, _random_obj(rng), _random_obj(rng)],
                               [_random_obj(rng), _random_obj(rng), _random_obj(rng)],
                               ["Echo", [_random_obj(rng)], rng.choice(["i32", "void", "str", 5])],
                               [_random_obj(rng), _random_obj(rng)]])
            b = bytearray(_frame(msgpack.packb(head)))
        elif op == 9 and b:
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randint(1, 64)] * rng.randint(1, 50)
    return bytes(b[:60000])


# ------------------------------------------------------------------------ messages
def fuzz_messages(snapshot: Snapshot, seconds: float, seed: int,
                  reference: Callable[[MultiUseSandbox], bool] | None = None,
                  max_mutations: int | None = None) -> Stats:
    """Run mutated guest output through a real sandbox for `seconds`. `reference(sb)` checks
    the restored sandbox against the fresh-VM fingerprint (every 2,000 mutations and at the
    end)."""
    rng = random.Random(seed)
    stats = Stats("messages")
    violations: list[str] = []

    def echo(v: I32) -> I32:
        if type(v) is not int or not -(1 << 31) <= v < (1 << 31):
            violations.append(f"Echo got {v!r}")
        return v

    def printer(text: str) -> I32:
        if type(text) is not str:
            violations.append(f"HostPrint got {text!r}")
        return 0

    hf = HostFunctions().register("Echo", echo)
    hf.register("HostPrint", printer)
    pool = message_seeds()
    sb = MultiUseSandbox.from_snapshot(snapshot, host_functions=hf)
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds and (max_mutations is None
                                                     or stats.mutations < max_mutations):
            data = mutate_bytes(rng, rng.choice(pool), pool)
            port = rng.choice(PORTS)
            stats.mutations += 1
            try:
                sb.call("RawOut", data, port)
                stats.count("accepted")
                if len(pool) < 500 and rng.random() < 0.05:
                    pool.append(data)
            except SnapcellError as e:
                stats.count(type(e).__name__)
            except Exception as e:          # anything else is a host bug
                stats.crashes.append(f"port {port:#x} data {data[:200].hex()}: {type(e).__name__}: {e}")
            sb.restore(snapshot)
            if reference is not None and stats.mutations % 2000 == 0:
                if not reference(sb):
                    stats.crashes.append(f"after {stats.mutations} mutations the restored "
                                         "sandbox differs from a fresh one")
                sb.restore(snapshot)        # the check ran a call: back to the snapshot
        if reference is not None and not reference(sb):
            stats.crashes.append("the restored sandbox differs from a fresh one at the end")
    finally:
        sb.close()
        stats.seconds = time.monotonic() - start
    stats.crashes += violations
    return stats


# ------------------------------------------------------------------------ snapshot files
def _json_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _json_paths(v, prefix + (i,))
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _mutate_json(rng: random.Random, doc: Any) -> Any:
    paths = _json_paths(doc)
    path = rng.choice(paths[1:] or paths)
    parent: Any = doc
    for k in path[:-1]:
        parent = parent[k]
    if not path:
        return _jsonable(_random_obj(rng))
    key = path[-1]
    old = parent[key]
    op = rng.randrange(6)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 1 and isinstance(parent, dict):
        parent[f"x{rng.randrange(9)}"] = _jsonable(_random_obj(rng))
    elif op == 2 and isinstance(old, int) and not isinstance(old, bool):
        parent[key] = rng.choice([old + 1, old - 1, old + 4096, old - 4096, 0, -1, 2**63, 2**64,
                                  old * 2, old // 2, old ^ (1 << rng.randrange(64))])
    elif op == 3 and isinstance(old, str):
        parent[key] = rng.choice(["", old[:-1], old + "x", old.upper(), "../etc", "\x00",
                                  old.replace("sha256", "sha512"), "sha256:" + "0" * 64])
    else:
        parent[key] = _jsonable(_random_obj(rng))
    return doc


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _copy_sparse(src: Path, dst: Path) -> None:
    fd_in = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(fd_in).st_size
        with open(dst, "wb") as f:
            f.truncate(size)
            off = 0
            while off < size:
                try:
                    start = os.lseek(fd_in, off, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd_in, start, os.SEEK_HOLE)
                f.seek(start)
                f.write(os.pread(fd_in, end - start, start))
                off = end
    finally:
        os.close(fd_in)


class LayoutMutator:
    """Copies a base layout and applies one random mutation, re-digesting edited JSON so the
    reference chain (index → manifest → config/layers) stays valid when asked to."""

    def __init__(self, base: Path, rng: random.Random) -> None:
        self.base, self.rng = base, rng

    def make(self, work: Path) -> str:
        """A mutated copy of the base layout in `work`; returns a description."""
        if work.exists():
            shutil.rmtree(work)
        (work / "blobs" / "sha256").mkdir(parents=True)
        for name in ("oci-layout", "index.json"):
            shutil.copyfile(self.base / name, work / name)
        for p in (self.base / "blobs" / "sha256").iterdir():
            _copy_sparse(p, work / "blobs" / "sha256" / p.name)
        rng = self.rng
        index = json.loads((work / "index.json").read_bytes())
        mdesc = index["manifests"][0]
        mpath = work / "blobs" / "sha256" / mdesc["digest"].split(":")[1]
        manifest = json.loads(mpath.read_bytes())
        choice = rng.randrange(10)
        fix = rng.random() < 0.8
        if choice <= 3:                                           # the config
            cdesc = manifest["config"]
            cpath = work / "blobs" / "sha256" / cdesc["digest"].split(":")[1]
            doc = _mutate_json(rng, json.loads(cpath.read_bytes()))
            data = json.dumps(doc).encode()
            what = "config"
            if fix:
                cpath.unlink()
                cdesc["digest"], cdesc["size"] = _sha(data), len(data)
                cpath = work / "blobs" / "sha256" / cdesc["digest"].split(":")[1]
            cpath.write_bytes(data)
            manifest_changed = fix
        elif choice <= 5:                                         # the manifest itself
            manifest = _mutate_json(rng, manifest)
            what, manifest_changed = "manifest", True
        elif choice == 6:                                         # index.json
            (work / "index.json").write_bytes(json.dumps(_mutate_json(rng, index)).encode())
            return "index"
        elif choice == 7:                                         # raw bytes of a small file
            target = rng.choice([work / "oci-layout", work / "index.json", mpath])
            target.write_bytes(mutate_bytes(rng, target.read_bytes(), [b"{}"]))
            return f"bytes of {target.name[:12]}"
        else:                                                     # the memory blob
            layer = manifest["layers"][rng.randrange(len(manifest["layers"]))]
            lpath = work / "blobs" / "sha256" / layer["digest"].split(":")[1]
            size = lpath.stat().st_size
            with open(lpath, "r+b") as f:
                op = rng.randrange(3)
                if op == 0:
                    f.truncate(rng.randrange(size + 1))
                elif op == 1:
                    f.truncate(size + rng.choice((1, 4096, 1 << 20)))
                else:
                    off = rng.randrange(size)
                    f.seek(off)
                    f.write(rng.randbytes(rng.randint(1, 64)))
            return "memory blob"
        if manifest_changed:
            data = json.dumps(manifest).encode()
            if fix:
                mpath.unlink()
                mdesc["digest"], mdesc["size"] = _sha(data), len(data)
                mpath = work / "blobs" / "sha256" / mdesc["digest"].split(":")[1]
                (work / "index.json").write_bytes(json.dumps(index).encode())
            mpath.write_bytes(data)
        return what + (" (re-digested)" if fix else "")


def _open_fds() -> int:
    """Open descriptors once the process's bounded caches (loaded-image cache, warm VM pool)
    are emptied: what remains is what a leak would leave."""
    import gc

    from snapcell.guest.loader import system_images
    from snapcell.sandbox.pool import default_pool
    from snapcell.snapshot import content
    content.clear()
    default_pool().clear()
    system_images.clear()
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def fuzz_snapshots(snapshot: Snapshot, host_functions: HostFunctions, seconds: float, seed: int,
                   max_mutations: int | None = None) -> Stats:
    """Load mutated copies of `snapshot`'s saved layout for `seconds`."""
    from snapcell.snapshot import content
    rng = random.Random(seed)
    stats = Stats("snapshots")
    with tempfile.TemporaryDirectory(prefix="snapcell-fuzz-") as tmp:
        base = Path(tmp) / "base"
        snapshot.save(str(base), "base")
        mutator = LayoutMutator(base, rng)
        work = Path(tmp) / "work"
        fds = _open_fds()
        start = time.monotonic()
        while time.monotonic() - start < seconds and (max_mutations is None
                                                     or stats.mutations < max_mutations):
            what = mutator.make(work)
            stats.mutations += 1
            loader = Snapshot.checked_load if rng.random() < 0.3 else Snapshot.load
            mode = "map" if rng.random() < 0.4 else "copy"   # map: the layers mapped CoW
            if mode == "map":
                content.clear()              # (else a cached private image may serve it)
            try:
                snap = loader(str(work), "base", mode=mode)
            except SnapcellError as e:
                stats.count(type(e).__name__)
                continue
            except Exception as e:
                stats.crashes.append(f"{what}: {loader.__name__} ({mode}): "
                                     f"{type(e).__name__}: {e}")
                continue
            stats.count("loaded")
            if snap.image.maps_files:
                stats.count("mapped")
            try:
                with MultiUseSandbox.from_snapshot(snap, host_functions=host_functions) as sb:
                    sb.call("Probe", timeout=1.0)     # a mutated image may loop forever
                stats.count("ran")
            except SnapcellError as e:
                stats.count("run:" + type(e).__name__)
            except Exception as e:
                stats.crashes.append(f"{what}: run: {type(e).__name__}: {e}")
            if stats.mutations % 500 == 0 and _open_fds() > fds + 2:
                stats.crashes.append(f"descriptors leak: {fds} → {_open_fds()}")
        stats.seconds = time.monotonic() - start
    return stats


def _main() -> None:
    from snapcell import UninitializedSandbox
    from tests.adversarial.conftest import fingerprint, host_functions, reference
    from tests.conftest import guest_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300.0, help="per target")
    ap.add_argument("--target", choices=("messages", "snapshots", "responses", "all"),
                    default="all")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    hf = host_functions()
    sb = UninitializedSandbox(guest_path("adversary"), config=FUZZ_CONFIG, host_functions=hf).evolve()
    snap = sb.snapshot()
    sb.close()
    ref = reference(snap)
    print(f"seed {args.seed}")
    failed = False
    if args.target in ("messages", "all"):
        st = fuzz_messages(snap, args.seconds, args.seed, lambda s: fingerprint(s) == ref)
        print(st.line())
        failed |= bool(st.crashes)
        for c in st.crashes[:20]:
            print("  CRASH", c)
    if args.target in ("snapshots", "all"):
        st = fuzz_snapshots(snap, hf, args.seconds, args.seed)
        print(st.line())
        failed |= bool(st.crashes)
        for c in st.crashes[:20]:
            print("  CRASH", c)
    if args.target in ("responses", "all"):
        from tests.adversarial.fuzz_code import fuzz_responses, hostile_snapshot
        st = fuzz_responses(hostile_snapshot(guest_path("adversary")), args.seconds, args.seed)
        print(st.line())
        failed |= bool(st.crashes)
        for c in st.crashes[:20]:
            print("  CRASH", c)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    _main()
