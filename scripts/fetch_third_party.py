"""Fetch the pinned third-party sources of third_party/sources.toml into build/third_party/.

    python scripts/fetch_third_party.py NAME [NAME ...]

Each archive is downloaded once into build/third_party/dl/ (kept while its sha256 matches) —
from its `url`, or, for a pin with `apt_source`, as the `file` of that Debian source package
through `apt-get source --download-only` (the set-up adds the deb-src entry) —
checked against the pinned sha256 and its `subdir` unpacked into build/third_party/NAME/, with a
stamp file naming the hash, so a re-run with the same pin does nothing. A hash mismatch is an
error and leaves nothing unpacked."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "third_party" / "sources.toml"
DEST = ROOT / "build" / "third_party"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, sha256: str) -> Path:
    dl = DEST / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    target = dl / url.rsplit("/", 1)[1]
    if target.exists() and sha256_of(target) == sha256:
        return target
    tmp = target.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=120) as r, tmp.open("wb") as f:
        shutil.copyfileobj(r, f)
    got = sha256_of(tmp)
    if got != sha256:
        tmp.unlink()
        raise SystemExit(f"fetch_third_party: {url}: sha256 {got}, pinned {sha256}")
    tmp.replace(target)
    return target


def apt_download(package: str, filename: str, sha256: str) -> Path:
    """The file `filename` of Debian source package `package`, fetched with apt-get source."""
    dl = DEST / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    target = dl / filename
    if target.exists() and sha256_of(target) == sha256:
        return target
    with tempfile.TemporaryDirectory(dir=dl) as tmp:
        proc = subprocess.run(["apt-get", "source", "--download-only", "-qq", package], cwd=tmp,
                              capture_output=True, text=True)
        got_file = Path(tmp, filename)
        if not got_file.exists():
            raise SystemExit(f"fetch_third_party: apt-get source {package} gave no {filename} "
                             f"(is there a deb-src entry? run scripts/bootstrap.sh):\n"
                             f"{proc.stderr.strip()}")
        got = sha256_of(got_file)
        if got != sha256:
            raise SystemExit(f"fetch_third_party: {filename}: sha256 {got}, pinned {sha256}")
        got_file.replace(target)
    return target


def unpack(name: str, archive: Path, subdir: str, sha256: str) -> Path:
    out = DEST / name
    stamp = out / ".snapcell-sha256"
    if stamp.exists() and stamp.read_text().strip() == sha256:
        return out
    with tempfile.TemporaryDirectory(dir=DEST) as tmp:
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers()
                       if m.name == subdir or m.name.startswith(subdir + "/")]
            if not members:
                raise SystemExit(f"fetch_third_party: {archive.name} has no {subdir}/")
            tf.extractall(tmp, members=members, filter="data")
        if out.exists():
            shutil.rmtree(out)
        Path(tmp, subdir).rename(out)
    stamp.write_text(sha256 + "\n")
    return out


def main(names: list[str]) -> None:
    pins = tomllib.loads(PINS.read_text())
    for name in names or list(pins):
        if name not in pins:
            raise SystemExit(f"fetch_third_party: no pin for {name!r} in {PINS.name}")
        pin = pins[name]
        if "apt_source" in pin:
            archive = apt_download(pin["apt_source"], pin["file"], pin["sha256"])
        else:
            archive = download(pin["url"], pin["sha256"])
        print(unpack(name, archive, pin["subdir"], pin["sha256"]).relative_to(ROOT))


if __name__ == "__main__":
    main(sys.argv[1:])
