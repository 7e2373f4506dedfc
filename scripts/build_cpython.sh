#!/usr/bin/env bash
# Build CPython 3.11 statically with musl (for the Python guest, docs/code-sandboxes.md).
#
#   scripts/build_cpython.sh            # -> build/cpython/obj/{libpython3.11.a,python,...}
#
# Inputs: the pinned sources of third_party/sources.toml (cpython, zlib; fetched by
# scripts/fetch_third_party.py), the patches in third_party/patches/ and this script. The
# result is cached under build/cpython/ and rebuilt only when the hash of those inputs changes
# (configure + make take ~6 minutes on 2 cores).
#
# Steps: zlib as a static musl library (build/cpython/prefix/); CPython's configure (patched: a
# copy of it with its platform-triplet check relaxed, the fetched tree stays pristine) in an
# out-of-tree build directory; Modules/Setup.local made from the static part of the generated
# Modules/Setup.stdlib (Linux builds those modules as shared objects otherwise, and a static
# musl binary cannot load any), less the modules named in SKIP; make.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC=$ROOT/build/third_party/cpython
ZSRC=$ROOT/build/third_party/zlib
FSRC=$ROOT/build/third_party/libffi
OUT=${CPYTHON_BUILD_DIR:-$ROOT/build/cpython}    # another directory: e.g. to time a clean build
JOBS=${JOBS:-2}
CTYPES_SO=_ctypes.cpython-311-x86_64-linux-musl.so   # see "libffi and _ctypes" below
# Modules left out: no musl library to link (nis, _uuid, _dbm/_gdbm, _crypt needs libcrypt
# features musl lacks), sub-interpreters (one interpreter per sandbox), the fuzzing stub and
# _testinternalcapi (it needs the frozen getpath, which the bootstrap _freeze_module lacks).
SKIP="nis _uuid _gdbm _dbm _crypt _xxsubinterpreters _xxtestfuzz ossaudiodev spwd _testinternalcapi"

[ -f "$SRC/.snapcell-sha256" ] && [ -f "$ZSRC/.snapcell-sha256" ] && [ -f "$FSRC/.snapcell-sha256" ] || {
  echo "build_cpython: sources missing; run scripts/fetch_third_party.py cpython zlib libffi" >&2; exit 1; }
command -v musl-gcc >/dev/null || { echo "build_cpython: musl-gcc missing (musl-tools)" >&2; exit 1; }

inputs=$(cat "$SRC/.snapcell-sha256" "$ZSRC/.snapcell-sha256" "$FSRC/.snapcell-sha256" "$0" third_party/patches/cpython-*.patch \
         | sha256sum | cut -d' ' -f1)
# ---- _bz2, _lzma, _sqlite3 (inputs): the sources of their libraries --------------------------
DBLIBS="bzip2 xz-utils sqlite3"
for d in $DBLIBS; do
  [ -f "$ROOT/build/third_party/$d/.snapcell-sha256" ] || {
    echo "build_cpython: sources missing; run scripts/fetch_third_party.py $DBLIBS" >&2; exit 1; }
done
inputs=$( { echo "$inputs"; for d in $DBLIBS; do cat "$ROOT/build/third_party/$d/.snapcell-sha256"; done; } \
         | sha256sum | cut -d' ' -f1)
# ---- end of the _bz2, _lzma, _sqlite3 inputs --------------------------------------------------
# ---- _ssl, _hashlib (inputs): OpenSSL, built static with musl by scripts/build_openssl.sh -----
OSSL=$ROOT/build/openssl
[ -f "$OSSL/.inputs-sha256" ] || { echo "build_cpython: OpenSSL missing; run scripts/build_openssl.sh" >&2; exit 1; }
inputs=$( { echo "$inputs"; cat "$OSSL/.inputs-sha256"; } | sha256sum | cut -d' ' -f1)
# ---- end of the _ssl, _hashlib inputs ---------------------------------------------------------

if [ -f "$OUT/.inputs-sha256" ] && [ "$(cat "$OUT/.inputs-sha256")" = "$inputs" ] \
   && [ -f "$OUT/obj/libpython3.11.a" ] && [ -x "$OUT/obj/python" ] && [ -f "$OUT/obj/$CTYPES_SO" ]; then
  exit 0
fi
start=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT/prefix" "$OUT/obj"
export CC=musl-gcc
CFLAGS_COMMON="-O2 -fno-pie -fstack-clash-protection"

# ---- zlib -----------------------------------------------------------------------------------
cp -r "$ZSRC" "$OUT/zlib"
(cd "$OUT/zlib" && CFLAGS="$CFLAGS_COMMON" ./configure --static --prefix="$OUT/prefix" >/dev/null \
   && make -s -j"$JOBS" libz.a >/dev/null && make -s install >/dev/null)

# ---- bzip2, liblzma, SQLite: static musl libraries for _bz2, _lzma, _sqlite3 ----------------
# Installed in $OUT/prefix like zlib, where configure finds them (pkg-config files for liblzma and
# sqlite3; bzip2 has none: its header and -lbz2 are checked directly). SQLite is the amalgamation
# made from Debian's source tree (tclsh makes it, the host compiler its generators), compiled
# with musl; no loadable extensions (a static guest loads no shared objects).
cp -r "$ROOT/build/third_party/bzip2" "$OUT/bzip2"
make -s -C "$OUT/bzip2" -j"$JOBS" libbz2.a CC=musl-gcc CFLAGS="$CFLAGS_COMMON -D_FILE_OFFSET_BITS=64" \
  >/dev/null
install -m 644 "$OUT/bzip2/libbz2.a" "$OUT/prefix/lib/"
install -m 644 "$OUT/bzip2/bzlib.h" "$OUT/prefix/include/"
cp -a "$ROOT/build/third_party/xz-utils" "$OUT/xz"      # -a: keep mtimes (no autotools rerun)
(cd "$OUT/xz" && CFLAGS="$CFLAGS_COMMON" LDFLAGS="-static -no-pie" ./configure --prefix="$OUT/prefix" --disable-shared \
   --enable-static --disable-threads --disable-nls --disable-xz --disable-xzdec --disable-lzmadec \
   --disable-lzmainfo --disable-lzma-links --disable-scripts --disable-doc >/dev/null \
   && make -s -C src/liblzma -j"$JOBS" >/dev/null && make -s -C src/liblzma install >/dev/null)
cp -a "$ROOT/build/third_party/sqlite3" "$OUT/sqlite-src"
(cd "$OUT/sqlite-src" && CC=cc ./configure --disable-tcl --disable-readline >/dev/null \
   && make -s sqlite3.c >/dev/null)
SQLITE_DEFS="-DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_ENABLE_FTS5 -DSQLITE_ENABLE_MATH_FUNCTIONS"
(cd "$OUT/sqlite-src" && musl-gcc $CFLAGS_COMMON $SQLITE_DEFS -c sqlite3.c -o sqlite3.o \
   && ar rcs "$OUT/prefix/lib/libsqlite3.a" sqlite3.o)
install -m 644 "$OUT/sqlite-src/sqlite3.h" "$OUT/prefix/include/"
cat > "$OUT/prefix/lib/pkgconfig/sqlite3.pc" <<PC
prefix=$OUT/prefix
Name: SQLite
Description: SQL database engine (static, musl)
Version: $(cat "$OUT/sqlite-src/VERSION")
Libs: -L\${prefix}/lib -lsqlite3
Cflags: -I\${prefix}/include
PC
# ---- end of bzip2, liblzma, SQLite ------------------------------------------------------------

# ---- CPython: configure ----------------------------------------------------------------------
cp "$SRC/configure" "$OUT/configure"
for p in third_party/patches/cpython-configure-*.patch; do
  patch -s -d "$OUT" -p1 < "$p"
done
cd "$OUT/obj"
# pkg-config sees only our musl zlib (not the host's glibc libraries and their flags)
PKG_CONFIG_LIBDIR="$OUT/prefix/lib/pkgconfig" PKG_CONFIG_PATH="" \
CFLAGS="$CFLAGS_COMMON" CPPFLAGS="-I$OUT/prefix/include" LDFLAGS="-static -no-pie -L$OUT/prefix/lib" \
  "$OUT/configure" --srcdir="$SRC" --prefix=/usr --disable-shared --without-ensurepip \
  --with-openssl="$OSSL/prefix" --with-openssl-rpath=no \
  --with-pymalloc > configure.log 2>&1 || { tail -30 configure.log >&2; exit 1; }

# ---- Modules/Setup.local: the static section of Setup.stdlib, built in -----------------------
mkdir -p Modules
{
  echo "# generated by scripts/build_cpython.sh: every available stdlib module, static"
  echo "*static*"
  awk -v skip=" $SKIP " '
    /^\*shared\*/ && seen { exit }                 # the test-only shared section
    /^\*/ { seen = 1; next }
    /^[ \t]*#/ || /^[ \t]*$/ { next }
    { name = $1; if (index(skip, " " name " ") == 0) print }
  ' Modules/Setup.stdlib
} > Modules/Setup.local

make -s -j"$JOBS" python > make.log 2>&1 || { tail -40 make.log >&2; exit 1; }
# sysconfig's data module (build/lib.linux-x86_64-3.11/_sysconfigdata_*.py; test.support and
# sysconfig import it), no extension modules: they are all built in
make -s pybuilddir.txt >> make.log 2>&1 || { tail -40 make.log >&2; exit 1; }

# ---- libffi and _ctypes (the dynamic Python guest only) --------------------------------------
# The dynamic guest (docs/code-sandboxes.md, "Packages and images") loads extension modules
# with musl's dynamic linker; pandas imports ctypes. _ctypes is built here as a shared
# extension module (obj/$CTYPES_SO, for the dynamic guest's lib-dynload) with libffi linked in
# static and PIC. --disable-exec-static-tramp: no trampoline table mapped from libffi's own
# file (the guest maps no code after its W^X seal). The static guest is not affected.
cp -r "$FSRC" "$OUT/libffi"
(cd "$OUT/libffi" && CFLAGS="-O2 -fPIC" ./configure --host=x86_64-linux-musl --disable-shared \
   --enable-static --with-pic --disable-exec-static-tramp --disable-docs \
   --prefix="$OUT/ffi-prefix" --libdir="$OUT/ffi-prefix/lib" > configure-ffi.log 2>&1 \
   && make -s -j"$JOBS" > make-ffi.log 2>&1 && make -s install >> make-ffi.log 2>&1) \
  || { tail -30 "$OUT/libffi/configure-ffi.log" "$OUT/libffi/make-ffi.log" >&2; exit 1; }
mkdir -p "$OUT/ctypes"
for f in _ctypes callbacks callproc stgdict cfield; do
  musl-gcc -c -O2 -fPIC -DPy_BUILD_CORE_MODULE -I"$OUT/ffi-prefix/include" -I"$SRC/Include" \
    -I"$SRC/Include/internal" -I"$OUT/obj" -o "$OUT/ctypes/$f.o" "$SRC/Modules/_ctypes/$f.c"
done
musl-gcc -shared -o "$OUT/obj/$CTYPES_SO" "$OUT"/ctypes/*.o "$OUT/ffi-prefix/lib/libffi.a"

echo "$inputs" > "$OUT/.inputs-sha256"
echo "build_cpython: built in $(( $(date +%s) - start )) s ($(ls -s --block-size=M python | cut -d' ' -f1) python)"
