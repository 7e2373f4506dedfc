"""Refuse to run a copy of the package that shadows the installed one.

A checkout's `snapcell/` folder (or a copy of it) in the current directory or the script's
directory comes first on `sys.path`, so `import snapcell` would silently run that code — with its
own guest SDK and perhaps another version — instead of the installed package. Like numpy's "do
not import from the source directory", this raises an ImportError that says what happened and
what to do. An editable install of the very same checkout is not shadowing. Set
SNAPCELL_ALLOW_SHADOWING=1 to run the shadowing copy anyway."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ALLOW_ENV = "SNAPCELL_ALLOW_SHADOWING"


def installed_package_dir() -> Path | None:
    """Where the installed `snapcell` distribution's package lives (the checkout's `snapcell/`
    for an editable install), or None when snapcell is not installed. (Asked only when the
    package was found through the current or the script's directory.)"""
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse
    try:
        dist = metadata.distribution("snapcell")
    except metadata.PackageNotFoundError:
        return None
    direct = dist.read_text("direct_url.json")
    if direct:
        try:
            info = json.loads(direct)
        except ValueError:
            info = {}
        url = info.get("url", "") if isinstance(info, dict) else ""
        if url.startswith("file://") and info.get("dir_info", {}).get("editable"):
            return Path(unquote(urlparse(url).path)) / "snapcell"
    return Path(str(dist.locate_file("snapcell")))


def check_not_shadowed(package_dir: Path) -> None:
    """ImportError when `package_dir` (the package being imported) was found through the current
    or the script's directory while the installed snapcell lives elsewhere."""
    if os.environ.get(ALLOW_ENV) == "1":
        return
    here = package_dir.resolve()
    first = {Path.cwd().resolve()}
    if sys.path and sys.path[0]:
        first.add(Path(sys.path[0]).resolve())
    if here.parent not in first:
        return                                  # found through an ordinary sys.path entry
    installed = installed_package_dir()
    if installed is None or not installed.exists() or installed.resolve() == here:
        return
    raise ImportError(
        f"snapcell was about to be imported from {here}, a folder in the current (or the "
        f"script's) directory, which shadows the installed snapcell at {installed.resolve()}. "
        "Run from another directory, or install this checkout instead (pip install -e "
        f"{here.parent}, or `make setup` there); set {ALLOW_ENV}=1 to use this copy anyway.")
