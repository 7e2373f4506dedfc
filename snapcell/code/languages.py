"""The interpreter guests code sandboxes run, and where their ELFs are found."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError

GUEST_DIR_ENV = "SNAPCELL_CODE_GUESTS"
_REPO_GUESTS = Path(__file__).resolve().parents[2] / "build" / "guests"


@dataclass(frozen=True)
class Language:
    """An interpreter guest: its short name, the guest ELF's file name, the default file name
    errors and stack traces show, its display name, whether it has a file system (then
    runs take `files=` and return the files they wrote) and keyword arguments (else a tool
    called with one plain object takes its keys as keyword arguments)."""

    name: str
    elf: str
    filename: str
    display: str
    has_files: bool = False
    keywords: bool = False      # calls pass keyword arguments (else one object may stand for them)

    def guest_path(self) -> Path:
        """The guest ELF ($SNAPCELL_CODE_GUESTS, else the repository's build/guests/)."""
        base = Path(os.environ.get(GUEST_DIR_ENV) or _REPO_GUESTS)
        path = base / self.elf
        if not path.is_file():
            raise ConfigurationError(
                f"the {self.display} guest {path} is not built; run `make code-guests` "
                f"(or set {GUEST_DIR_ENV} to the directory holding {self.elf})")
        return path


LANGUAGES: dict[str, Language] = {
    "js": Language("js", "js.elf", "main.js", "JavaScript (QuickJS-ng)"),
    "lua": Language("lua", "lua.elf", "main.lua", "Lua 5.4"),
    "python": Language("python", "python.elf", "main.py", "Python 3.11 (CPython)", has_files=True,
                       keywords=True),
}
_ALIASES = {"javascript": "js", "quickjs": "js", "lua54": "lua", "lua5.4": "lua", "py": "python",
            "python3": "python", "cpython": "python"}


def language(name: str) -> Language:
    """The Language called `name` (or an alias: javascript, quickjs, lua5.4, py, python3)."""
    if not isinstance(name, str):
        raise ConfigurationError(f"language must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in LANGUAGES:
        raise ConfigurationError(f"unknown language {name!r}; choose one of "
                                 + ", ".join(sorted(LANGUAGES)))
    return LANGUAGES[key]
