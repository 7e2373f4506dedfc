"""The per-reset entropy generator: never repeats, and a forked child does not share it."""

from __future__ import annotations

import os

from snapcell.sandbox.entropy import Entropy, fresh_bytes


def test_fresh_bytes_never_repeat() -> None:
    seen = {fresh_bytes() for _ in range(20000)}
    assert len(seen) == 20000 and all(len(b) == 64 for b in seen)


def test_reseed_changes_the_stream_and_the_guest_seed() -> None:
    e = Entropy()
    first = e.read(100)
    seed = e.reseed()
    assert e.read(100) != first and len(seed) == 32 and seed != e.reseed()


def test_a_forked_child_draws_other_bytes() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, fresh_bytes())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64)
    os.close(r)
    os.close(w)
    parent = [fresh_bytes() for _ in range(5)]
    assert len(child) == 64 and child not in parent
