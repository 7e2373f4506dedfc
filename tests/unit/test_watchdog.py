"""The watchdog's lock-free arming (snapcell.sandbox.interrupt.Watchdog), on stand-in handles:
whatever the order of arms, disarms and the thread's wakes, an armed call whose deadline
passes is killed once, by its call id, and a disarmed one never."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from snapcell.sandbox.interrupt import Watchdog


class FakeHandle:
    """What the watchdog uses of an InterruptHandle: the arming slots and `_kill`."""

    def __init__(self) -> None:
        self._armed: tuple[float, int] | None = None
        self._watched = False
        self.kills: list[int] = []
        self.lock = threading.Lock()

    def _kill(self, timeout: bool, call_id: int | None) -> bool:
        assert timeout and call_id is not None
        with self.lock:
            self.kills.append(call_id)
        return True


def _wait_for(cond: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.002)
    return bool(cond())


# (handle index, timeout in ms or None for "disarm at once", pause in ms after it)
STEPS = st.lists(st.tuples(st.integers(0, 2), st.one_of(st.none(), st.integers(1, 40)),
                           st.integers(0, 15)), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(STEPS)
def test_expired_calls_are_killed_once_and_disarmed_ones_never(
        steps: list[tuple[int, int | None, int]]) -> None:
    dog = Watchdog()
    dog.IDLE_ROUNDS = 2
    handles = [FakeHandle() for _ in range(3)]
    calls = [0, 0, 0]
    expected: list[list[int]] = [[], [], []]
    for i, ms, pause in steps:
        h = handles[i]
        calls[i] += 1
        if ms is None:                       # a call that ends at once
            dog.arm(60.0, h, calls[i])       # type: ignore[arg-type]
            dog.disarm(h, calls[i])          # type: ignore[arg-type]
        else:                                # a call that never ends: must be killed
            dog.arm(ms / 1000, h, calls[i])  # type: ignore[arg-type]
            assert _wait_for(functools.partial(list.__contains__, h.kills, calls[i])), (i, ms)
            expected[i].append(calls[i])
            dog.disarm(h, calls[i])          # type: ignore[arg-type]
        time.sleep(pause / 1000)
    time.sleep(0.05)
    for h, want in zip(handles, expected):
        assert h.kills == want
