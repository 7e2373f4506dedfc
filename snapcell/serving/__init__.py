"""Serving: the asyncio `SandboxPool` shared by library users and `snapcell serve`, its
metrics, sessions, and the HTTP service (`snapcell.serving.app`, needs the `serve` extra).

Layer: above `debug/`, below the CLI. Nothing here is imported by the lower layers."""

from __future__ import annotations

from .metrics import PoolMetrics
from .pool import SandboxPool

__all__ = ["PoolMetrics", "SandboxPool"]
