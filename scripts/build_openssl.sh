#!/usr/bin/env bash
# Build OpenSSL statically with musl for the Python guest's _ssl and _hashlib, and the guest's CA
# bundle (docs/code-sandboxes.md, "TLS"; docs/security.md, "TLS in the Python guest").
#
#   scripts/build_openssl.sh      # -> build/openssl/prefix/{lib/libssl.a,lib/libcrypto.a,include}
#                                 #    build/openssl/ca-certificates.crt
#
# Inputs: the pinned sources of third_party/sources.toml (openssl, ca-certificates; fetched by
# scripts/fetch_third_party.py), the patches third_party/patches/openssl-*.patch and this
# script. The result is cached under build/openssl/ and rebuilt only when the hash of those
# inputs changes (~4 minutes on 2 cores).
#
# OpenSSL: static libraries only (no shared objects, DSOs, engines or async jobs: a static guest
# loads no code), the built-in default provider only (no-module, no-legacy), assembler kept (its
# CPU dispatch is held to the portable baseline by openssl-portable-cpu-dispatch.patch), threads
# on (CPython's _ssl requires them; the guest runs one thread). OPENSSLDIR is /usr/lib/ssl, as in
# Debian's build: the default verify file is /usr/lib/ssl/cert.pem, where the guest's image holds
# the CA bundle (under /usr, the one read-only tree the guest sees besides /tmp).
# The bundle is what Debian's ca-certificates package installs: certdata2pem.py run on Mozilla's
# certdata.txt (the .venv's `cryptography` parses the certificates) plus its extra/*.crt, the
# .crt files concatenated in name order, as update-ca-certificates does.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC=$ROOT/build/third_party/openssl
CASRC=$ROOT/build/third_party/ca-certificates
OUT=${OPENSSL_BUILD_DIR:-$ROOT/build/openssl}
JOBS=${JOBS:-2}
PY=${PY:-$ROOT/.venv/bin/python}

[ -f "$SRC/.snapcell-sha256" ] && [ -f "$CASRC/.snapcell-sha256" ] || {
  echo "build_openssl: sources missing; run scripts/fetch_third_party.py openssl ca-certificates" >&2
  exit 1; }
command -v musl-gcc >/dev/null || { echo "build_openssl: musl-gcc missing (musl-tools)" >&2; exit 1; }

inputs=$(cat "$SRC/.snapcell-sha256" "$CASRC/.snapcell-sha256" "$0" third_party/patches/openssl-*.patch \
         | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/.inputs-sha256" ] && [ "$(cat "$OUT/.inputs-sha256")" = "$inputs" ] \
   && [ -f "$OUT/prefix/lib/libssl.a" ] && [ -f "$OUT/prefix/lib/libcrypto.a" ] \
   && [ -f "$OUT/ca-certificates.crt" ]; then
  exit 0
fi
start=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT/prefix"

# ---- the CA bundle ----------------------------------------------------------------------------
cp -r "$CASRC" "$OUT/ca"
(cd "$OUT/ca" && "$PY" certdata2pem.py > certdata2pem.log 2>&1 && cp extra/*.crt .) \
  || { tail -20 "$OUT/ca/certdata2pem.log" >&2; exit 1; }
n=$(ls "$OUT/ca"/*.crt | wc -l)
[ "$n" -gt 100 ] || { echo "build_openssl: only $n certificates from certdata.txt" >&2; exit 1; }
(cd "$OUT/ca" && LC_ALL=C ls -1 -- *.crt | while IFS= read -r f; do cat -- "$f"; done) \
  > "$OUT/ca-certificates.crt"

# ---- OpenSSL ----------------------------------------------------------------------------------
cp -r "$SRC" "$OUT/src"
for p in third_party/patches/openssl-*.patch; do
  patch -s -d "$OUT/src" -p1 < "$p"
done
(cd "$OUT/src" && CC=musl-gcc ./Configure linux-x86_64 --prefix="$OUT/prefix" --libdir=lib \
   --openssldir=/usr/lib/ssl no-shared no-module no-dso no-engine no-async no-legacy no-tests \
   no-ui-console no-comp no-ssl3 no-weak-ssl-ciphers no-srp no-idea no-seed no-mdc2 no-rc5 \
   no-whirlpool no-gost no-afalgeng no-ktls no-secure-memory -O2 -fno-pie -fstack-clash-protection \
   > "$OUT/configure.log" 2>&1 \
   && make -s -j"$JOBS" build_libs > "$OUT/make.log" 2>&1 \
   && make -s install_dev >> "$OUT/make.log" 2>&1) \
  || { tail -n 40 "$OUT/configure.log" "$OUT/make.log" >&2; exit 1; }
rm -rf "$OUT/src" "$OUT/ca"                # ~100 MB of objects; the libraries are installed

echo "$inputs" > "$OUT/.inputs-sha256"
echo "build_openssl: built in $(( $(date +%s) - start )) s ($n CA certificates)"
