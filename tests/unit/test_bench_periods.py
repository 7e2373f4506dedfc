"""The benchmark's fastest-period selection (snapcell.bench.driver.fastest_period): rounds are
kept exactly when their floor block is within FASTEST_BAND of the 5th percentile of all
rounds' floors, and every kept round contributes all its samples of every row."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from snapcell.bench.driver import FASTEST_BAND, fastest_period

ROUND = st.tuples(st.floats(20.0, 60.0), st.lists(st.integers(1, 10**6), min_size=1, max_size=5),
                  st.lists(st.integers(1, 10**6), min_size=1, max_size=5))


@given(st.lists(ROUND, min_size=1, max_size=60))
def test_kept_rounds_are_those_near_the_fastest(raw: list[tuple[float, list[int], list[int]]]) -> None:
    rounds = [(f, {"floor": [int(f * 1000)], "a": a, "b": b}) for f, a, b in raw]
    got = fastest_period(rounds, ("floor", "a", "b"))
    floors = sorted(f for f, _ in rounds)
    limit = floors[len(floors) // 20] * FASTEST_BAND
    kept = [g for f, g in rounds if f <= limit]
    assert kept                                               # never empty
    for row in ("floor", "a", "b"):
        want = sorted(x for g in kept for x in g[row])
        assert got[f"{row}_fastest_period"]["n"] == len(want)
        assert got[f"{row}_fastest_period"]["min_us"] == want[0] / 1000


def test_a_machine_with_two_speeds_keeps_only_the_fast_rounds() -> None:
    rounds = [(25.0 if i % 3 else 34.0, {"floor": [25 if i % 3 else 34], "x": [i]})
              for i in range(30)]
    got = fastest_period(rounds, ("floor", "x"))
    assert got["x_fastest_period"]["n"] == 20 and got["floor_fastest_period"]["median_us"] == 0.025
