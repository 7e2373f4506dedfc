"""Code sandboxes: run JavaScript (QuickJS-ng) and Lua 5.4 snippets in micro-VMs, each run
starting from a warm snapshot of the initialised interpreter (docs/code-sandboxes.md)."""

from .languages import LANGUAGES, Language, language
from .result import CodeError, RunResult
from .sandbox import CodeSandbox
from .warm import warm_snapshot

__all__ = ["LANGUAGES", "CodeError", "CodeSandbox", "Language", "RunResult", "language",
           "warm_snapshot"]
