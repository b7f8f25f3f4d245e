"""LabelStats.add_rows (the converter's chunk-at-a-time path) against add, one sample at a time."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mtldata.storage.manifest import MAX_DISTINCT, LabelStats

VALUES = st.one_of(
    st.integers(-3, 3).map(float),
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5, -0.0]),
)


def one_at_a_time(rows: np.ndarray) -> LabelStats:
    stats = LabelStats()
    for row in rows:
        stats.add(row)
    return stats


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(1, 4),
    data=st.data(),
    cuts=st.lists(st.integers(0, 40), max_size=4),
)
def test_add_rows_in_any_chunks_equals_one_sample_at_a_time(k, data, cuts):
    n = data.draw(st.integers(1, 40))
    rows = np.array(
        data.draw(st.lists(st.lists(VALUES, min_size=k, max_size=k), min_size=n, max_size=n)), np.float32
    )
    want = one_at_a_time(rows)
    got = LabelStats()
    bounds = sorted({0, n, *(c for c in cuts if c <= n)})
    for start, stop in zip(bounds, bounds[1:], strict=False):
        got.add_rows(rows[start:stop])
    names = [f"c{j}" for j in range(k)]
    # repr: a nan (inf - inf in a sum) equals itself there
    assert repr(got.summary(names)) == repr(want.summary(names))
    fields = ("count", "sums", "mins", "maxs", "missing", "integral")
    assert repr([getattr(got, f) for f in fields]) == repr([getattr(want, f) for f in fields])


def test_add_rows_stops_listing_values_past_the_cap_like_add():
    rows = np.arange(MAX_DISTINCT + 5, dtype=np.float32).reshape(-1, 1)
    got = LabelStats()
    got.add_rows(rows[:10])
    got.add_rows(rows[10:])
    assert got.distinct == one_at_a_time(rows).distinct == [None]


def test_add_rows_gives_no_numpy_warning_for_inf(recwarn):
    LabelStats().add_rows(np.array([[np.inf, 1.0], [np.nan, 2.5]], np.float32))
    assert not [w for w in recwarn if "numpy" in str(w.filename) or "invalid value" in str(w.message)]


def test_plain_copy_is_what_asdict_makes_and_shares_no_container() -> None:
    import dataclasses

    from mtldata.storage.manifest import plain_copy

    stats = LabelStats()
    stats.add_rows(np.array([[1.0, np.nan], [2.0, 0.5], [3.0, 0.25]], np.float32))

    @dataclasses.dataclass
    class Holder:
        stats: LabelStats
        shapes: dict
        pair: tuple
        note: str | None = None

    holder = Holder(stats, {"3x4x5": 2, "nested": {"a": [1, 2]}}, (1, [2.5]))
    copied = plain_copy(holder)
    assert copied == dataclasses.asdict(holder)
    copied["stats"]["sums"].append(99.0)
    copied["shapes"]["nested"]["a"].append(3)
    copied["pair"][1].append(4)
    assert stats.sums == dataclasses.asdict(holder)["stats"]["sums"] and 99.0 not in stats.sums
    assert holder.shapes["nested"]["a"] == [1, 2] and holder.pair[1] == [2.5]
