#!/usr/bin/env bash
# Install what snapcell needs on a Debian 12 box, then the Python environment. Idempotent:
# packages already present are not reinstalled and apt is only consulted when one is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(gcc make musl-tools musl-dev libmsgpuck-dev gdb docker-registry python3-venv iproute2 tzdata patch dpkg-dev)
missing=()
# node and npm build the JS guest's Intl bundle (scripts/build_js_intl.sh); a nodejs that ships
# its own npm (nodesource's) is kept as it is
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)
# the bench's HTTP load generator (a C program: a Python client costs the server's cores as much
# CPU per request as the server), pinned to bookworm's build
PKGS+=(wrk=4.1.0-3+b2)
for p in "${PKGS[@]}"; do
  want=""; [[ $p == *=* ]] && want=${p#*=}       # name=version: that version exactly
  dpkg-query -W -f='${Status} ${Version}' "${p%%=*}" 2>/dev/null \
    | grep -q "^install ok installed ${want}" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian source packages (CPython and zlib for the Python guest: third_party/sources.toml) come
# through `apt-get source`, which needs a deb-src entry.
SRC_LIST=/etc/apt/sources.list.d/snapcell-src.sources
if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "bootstrap: adding a deb-src entry ($SRC_LIST)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  printf '%s\n' 'Types: deb-src' 'URIs: http://deb.debian.org/debian' \
    'Suites: bookworm bookworm-updates' 'Components: main' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' | $SUDO tee "$SRC_LIST" >/dev/null
  $SUDO apt-get update -qq
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.snapcell-installed
# pip's notes about index locations that this host's pip configuration lists but that do not
# exist are not ours to fix; every other message (and every error) is shown.
quiet_pip() {
  "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$" || true; }
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing snapcell and its Python dependencies into .venv"
  quiet_pip .venv/bin/pip install -q --upgrade pip
  quiet_pip .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
