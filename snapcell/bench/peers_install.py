"""Installing the bench's peers on demand (snapcell/bench/peers/, docs/benchmarks.md): npm
packages by `npm ci` from the pinned package-lock.json (integrity hashes), Debian packages by
`apt-get download` checked against the sha256 in peers.toml and unpacked (not installed), all
cached under build/peers. A peer that cannot be installed is a `PeerUnavailable` carrying the
reason, which the bench reports in its row."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("peers")
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "peers"
NODE_HEADERS = Path("/usr/include/node/node_api.h")   # Debian's / NodeSource's nodejs ships them


class PeerUnavailable(Exception):
    """A peer that could not be installed or started here; the message says why."""


@cache
def config() -> dict[str, Any]:
    """peers.toml."""
    with open(DATA / "peers.toml", "rb") as f:
        return tomllib.load(f)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def node() -> str:
    """The node executable."""
    exe = shutil.which("node") or shutil.which("nodejs")
    if exe is None:
        raise PeerUnavailable("no node executable (Debian's nodejs package)")
    return exe


def npm_modules(install: bool = True) -> Path:
    """build/peers/npm/node_modules, installed by `npm ci` from the pinned lock file when the
    lock changed (or nothing is installed yet). isolated-vm (a native addon) is built by
    node-gyp against the nodejs package's headers (`npm_config_nodedir=/usr`): node-gyp
    cannot download headers here. Its failure leaves the other packages installed."""
    dest = CACHE / "npm"
    stamp = dest / "node_modules" / ".snapcell-lock-sha256"
    lock = _sha256(DATA / "package-lock.json")
    if stamp.exists() and stamp.read_text() == lock:
        return dest / "node_modules"
    if not install:
        raise PeerUnavailable("npm peers not installed (run `snapcell bench` without --no-install)")
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailable("no npm executable")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(DATA / name, dest / name)
    env = dict(os.environ)
    if NODE_HEADERS.exists():
        env["npm_config_nodedir"] = str(NODE_HEADERS.parents[2])
    log = dest / "install.log"
    with open(log, "w") as out:
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=dest, env=env,
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise PeerUnavailable(f"npm ci failed ({done.returncode}): {' / '.join(tail)}")
    stamp.write_text(lock)
    return dest / "node_modules"


def npm_version(modules: Path, package: str) -> str:
    """The installed version of an npm package (raises PeerUnavailable when it is missing,
    e.g. an optional native addon that did not build)."""
    try:
        return str(json.loads((modules / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        log = CACHE / "npm" / "install.log"
        raise PeerUnavailable(f"npm package {package} did not install (see {log.relative_to(ROOT)})"
                              ) from None


def debian_binary(package: str, install: bool = True) -> Path:
    """A binary of Debian package `package` (peers.toml's [debian.PACKAGE]): the pinned .deb
    fetched with `apt-get download`, its sha256 checked, unpacked with `dpkg-deb -x` under
    build/peers/debian/PACKAGE."""
    pin = config()["debian"][package]
    dest = CACHE / "debian" / package
    binary = dest / str(pin["binary"])
    stamp = dest / ".snapcell-sha256"
    if stamp.exists() and stamp.read_text() == pin["sha256"] and binary.exists():
        return binary
    if not install:
        raise PeerUnavailable(f"Debian package {package} not fetched")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise PeerUnavailable(f"no {tool} to fetch Debian's {package}")
    work = CACHE / "debian" / f"{package}.download"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        got = subprocess.run(["apt-get", "download", f"{package}={pin['version']}"], cwd=work,
                             capture_output=True, text=True, check=False)
        debs = list(work.glob("*.deb"))
        if got.returncode != 0 or len(debs) != 1:
            why = (got.stderr.strip().splitlines() or ["no .deb"])[-1]
            raise PeerUnavailable(f"apt-get download {package}={pin['version']} failed: {why}")
        digest = _sha256(debs[0])
        if digest != pin["sha256"]:
            raise PeerUnavailable(f"{debs[0].name} has sha256 {digest}, not the pinned "
                                  f"{pin['sha256']}")
        shutil.rmtree(dest, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest)], check=True,
                       capture_output=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not binary.exists():
        raise PeerUnavailable(f"{pin['binary']} is not in Debian's {package}")
    stamp.write_text(pin["sha256"])
    return binary
