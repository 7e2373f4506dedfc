#!/usr/bin/env bash
# Build the JS guest's Intl bundle (docs/code-sandboxes.md, "Locales and Intl").
#
#   scripts/build_js_intl.sh        # -> build/js/intl.js and build/js/intl.S (the guest links it)
#
# `npm ci` installs the formatjs polyfills and esbuild exactly as guests/js/intl/package-lock.json
# pins them (every package by its integrity hash; install scripts are not run), then
# guests/js/intl/build.mjs bundles entry.js, collator.js and the CLDR data of the locales in
# locales.json into one minified script. Cached under build/js/: rebuilt only when the hash of
# guests/js/intl/ (minus node_modules) and this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC=$ROOT/guests/js/intl
OUT=$ROOT/build/js
WORK=$OUT/intl-npm
inputs=$( (cd "$SRC" && find . -path ./node_modules -prune -o -type f -print | LC_ALL=C sort \
  | xargs sha256sum; sha256sum < "$ROOT/scripts/build_js_intl.sh") | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/.intl-sha256" ] && [ "$(cat "$OUT/.intl-sha256")" = "$inputs" ] \
   && [ -f "$OUT/intl.js" ] && [ -f "$OUT/intl.S" ]; then
  exit 0        # up to date (not touched: the guest is not relinked for nothing)
fi
command -v npm >/dev/null || { echo "build_js_intl: npm is missing (apt-get install npm)" >&2; exit 1; }
start=$(date +%s)
mkdir -p "$WORK"
find "$WORK" -mindepth 1 -maxdepth 1 ! -name node_modules -exec rm -rf {} +
(cd "$SRC" && tar --exclude=./node_modules -cf - .) | tar -xf - -C "$WORK"
(cd "$WORK" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
node "$WORK/build.mjs" "$OUT/intl.js.tmp"
mv "$OUT/intl.js.tmp" "$OUT/intl.js"
# the guest links the bundle as read-only data, NUL-terminated as JS_Eval wants
cat > "$OUT/intl.S" <<ASM
    .section .rodata
    .globl js_intl
    .globl js_intl_end
js_intl:
    .incbin "$OUT/intl.js"
js_intl_end:
    .byte 0
    .section .note.GNU-stack,"",@progbits
ASM
echo "$inputs" > "$OUT/.intl-sha256"
echo "build_js_intl: $(stat -c %s "$OUT/intl.js") bytes in $(( $(date +%s) - start )) s"
