#!/usr/bin/env bash
# Build musl 1.2.5 (for the dynamic Python guest, docs/code-sandboxes.md "Packages and images").
#
#   scripts/build_musl.sh            # -> build/musl/{lib/libc.so,lib/libc.a,bin/musl-gcc,...}
#
# Debian bookworm's musl 1.2.3 ignores DT_RELR relocations, which several shared objects of
# PyPI's musllinux wheels use (their vendored libgcc_s, libstdc++, OpenBLAS): the dynamic guest
# is linked against this musl and runs under its dynamic linker (lib/libc.so, the PT_INTERP the
# host loads). Inputs: the pinned source of third_party/sources.toml (`musl`, fetched by
# scripts/fetch_third_party.py) and this script; the result is cached under build/musl/ and
# rebuilt only when the hash of those inputs changes (~1 minute on 2 cores).
#
# Also zlib as a shared library built with it (lib/libz.so.1, from the `zlib` pin): the one
# system library the musllinux wheel policy lets a wheel need without bundling it (Pillow's
# _imaging does); the dynamic guest's image holds it in /usr/lib.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC=$ROOT/build/third_party/musl
ZSRC=$ROOT/build/third_party/zlib
OUT=${MUSL_BUILD_DIR:-$ROOT/build/musl}
JOBS=${JOBS:-2}

[ -f "$SRC/.snapcell-sha256" ] && [ -f "$ZSRC/.snapcell-sha256" ] || {
  echo "build_musl: sources missing; run scripts/fetch_third_party.py musl zlib" >&2; exit 1; }
inputs=$(cat "$SRC/.snapcell-sha256" "$ZSRC/.snapcell-sha256" "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/.inputs-sha256" ] && [ "$(cat "$OUT/.inputs-sha256")" = "$inputs" ] \
   && [ -f "$OUT/lib/libc.so" ] && [ -x "$OUT/bin/musl-gcc" ] && [ -f "$OUT/lib/libz.so.1" ]; then
  exit 0
fi
start=$(date +%s)
rm -rf "$OUT" "$OUT.obj"
mkdir -p "$OUT.obj"
cp -r "$SRC/." "$OUT.obj"
cd "$OUT.obj"
CC=gcc CFLAGS="-O2" ./configure --prefix="$OUT" --syslibdir="$OUT/lib" --enable-wrapper=gcc \
  > configure.log 2>&1 || { tail -20 configure.log >&2; exit 1; }
make -s -j"$JOBS" > make.log 2>&1 || { tail -30 make.log >&2; exit 1; }
make -s install >> make.log 2>&1 || { tail -30 make.log >&2; exit 1; }
cd "$ROOT"
rm -rf "$OUT.obj"
# ---- zlib, shared ----------------------------------------------------------------------------
cp -r "$ZSRC/." "$OUT.obj"
(cd "$OUT.obj" && CC="$OUT/bin/musl-gcc" CFLAGS="-O2 -fPIC" ./configure --shared \
   --prefix="$OUT.obj/prefix" > configure.log 2>&1 && make -s -j"$JOBS" > make.log 2>&1) \
  || { tail -20 "$OUT.obj/configure.log" "$OUT.obj/make.log" >&2; exit 1; }
cp -L "$OUT.obj/libz.so.1" "$OUT/lib/libz.so.1"
rm -rf "$OUT.obj"
echo "$inputs" > "$OUT/.inputs-sha256"
echo "build_musl: built in $(( $(date +%s) - start )) s"
