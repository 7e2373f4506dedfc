"""The benchmark's fastest-period selection (snapcell.bench.timing.fastest_period): a block is
kept exactly when its floor level is within FASTEST_BAND of the 5th percentile of all blocks'
levels, and a kept block contributes all its samples to its row."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from snapcell.bench.timing import FASTEST_BAND, fastest_period

BLOCK = st.tuples(st.sampled_from(["floor", "a", "b"]), st.floats(20.0, 60.0),
                  st.lists(st.integers(1, 10**6), min_size=1, max_size=5))


@given(st.lists(BLOCK, min_size=1, max_size=60))
def test_kept_blocks_are_those_near_the_fastest(levels: list[tuple[str, float, list[int]]]) -> None:
    got = fastest_period(levels)
    ordered = sorted(level for _, level, _ in levels)
    limit = ordered[len(ordered) // 20] * FASTEST_BAND
    assert got                                               # never empty
    for row in {r for r, _, _ in levels}:
        want = sorted(x for r, level, v in levels if r == row and level <= limit for x in v)
        if not want:
            assert f"{row}_fastest_period" not in got
            continue
        assert got[f"{row}_fastest_period"]["n"] == len(want)
        assert got[f"{row}_fastest_period"]["min_us"] == want[0] / 1000


def test_a_machine_with_two_speeds_keeps_only_the_fast_blocks() -> None:
    levels = [("x", 25.0 if i % 3 else 34.0, [i + 1]) for i in range(30)]
    levels += [("floor", 25.0, [25]), ("floor", 34.0, [34])]
    got = fastest_period(levels)
    assert got["x_fastest_period"]["n"] == 20 and got["floor_fastest_period"]["n"] == 1
