#!/usr/bin/env python3
"""Regenerate the golden snapshot layouts in tests/goldens/ (`make goldens`).

Goldens are the format-stability contract: tests/test_snapshot_files.py loads them with the
current code and checks the guest state they carry. They hold their own memory, so they keep
loading when the guest binary changes; regenerate them only when the format itself changes
(bump FORMAT_VERSION) or the guest ABI does. From format 3 on they are made under the portable
CPU baseline (SandboxConfiguration's default), so they load on every host of this machine kind
whatever its CPU; they record the hypervisor (PVM). The format-2 goldens record the CPU of the
host kind without AVX-512 (their configs were re-recorded once, their memory untouched).

Layout: tests/goldens/simpleguest-v<FORMAT_VERSION>/ with tags
  static11  simpleguest after AddToStatic(11)
  pattern   the same, then AllocAndWritePattern(5000) — from format 2 on a diff: a sandbox made
            from the loaded static11, so its manifest is static11's layer plus one new layer
Small configuration (16 KiB buffers, 256 KiB heap, 32 KiB stack): ~1.5 MiB of memory per tag.
Older goldens (simpleguest-v1: one raw memory blob per tag; simpleguest-v2) stay in the repository."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from snapcell import MultiUseSandbox, SandboxConfiguration, UninitializedSandbox  # noqa: E402
from snapcell.snapshot import oci  # noqa: E402
from snapcell.snapshot.schema import FORMAT_VERSION  # noqa: E402
from tests.conftest import guest_path, make_host_functions  # noqa: E402

SMALL = SandboxConfiguration(input_size=16 << 10, output_size=16 << 10, heap_size=256 << 10,
                             stack_size=32 << 10)


def main() -> int:
    """Build the goldens; print what was written."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "goldens"), help="output directory")
    ap.add_argument("--guest", default=None, help="guest ELF (default build/guests/simpleguest.elf)")
    args = ap.parse_args()
    guest = args.guest or guest_path("simpleguest")
    target = Path(args.out) / f"simpleguest-v{FORMAT_VERSION}"
    tmp = target.with_name(target.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    with UninitializedSandbox(guest, config=SMALL, host_functions=make_host_functions()).evolve() as sb:
        sb.call("AddToStatic", 11)
        print("static11", oci.save(sb.snapshot(), str(tmp), "static11"))
    base = oci.load(str(tmp), "static11", verify=True)
    with MultiUseSandbox.from_snapshot(base, host_functions=make_host_functions()) as sb:
        sb.call("AllocAndWritePattern", 5000)
        print("pattern ", oci.save(sb.snapshot(), str(tmp), "pattern"))
    assert oci.inspect(str(tmp), "pattern")["depth"] == 2
    for tag, _ in oci.entries(str(tmp)):
        assert tag is not None
        oci.verify(str(tmp), tag)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} "
          f"({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
