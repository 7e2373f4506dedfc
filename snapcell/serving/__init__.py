"""Serving: the asyncio `SandboxPool` shared by library users and `snapcell serve`, its
metrics, sessions, and the HTTP service (`snapcell.serving.app`, needs the `serve` extra).

Layer: above `debug/`, below the CLI. Nothing here is imported by the lower layers."""

from __future__ import annotations

from .code import CodePool, CodeResult, register_backend
from .metrics import PoolMetrics
from .pool import SandboxPool
from .sessions import Session, SessionManager

__all__ = ["CodePool", "CodeResult", "PoolMetrics", "SandboxPool", "Session", "SessionManager",
           "register_backend"]
