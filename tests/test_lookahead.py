"""checked_ahead (inspect/lookahead.py): a check run in threads ahead of the walk, in order."""

from __future__ import annotations

import threading
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtldata.inspect import lookahead
from mtldata.inspect.lookahead import checked_ahead


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=300),
    threads=st.integers(1, 6),
    batch_items=st.integers(1, 5),
)
def test_every_item_comes_back_in_order_with_its_result(sizes, threads, batch_items):
    items = list(enumerate(sizes))
    # small batches (by count and by bytes), so that the read-ahead window fills
    with patch.object(lookahead, "BATCH_ITEMS", batch_items), patch.object(lookahead, "BATCH_BYTES", 64):
        found = list(checked_ahead(iter(items), lambda item: item[0] * 2, lambda item: item[1], threads))
    assert found == [(item, item[0] * 2) for item in items]


def test_the_check_runs_in_threads_and_they_end_with_the_walk():
    names = set()

    def check(item):
        names.add(threading.current_thread().name)
        return item

    assert [r for _, r in checked_ahead(iter(range(500)), check, lambda _: 1, 3)] == list(range(500))
    assert names and all(name.startswith("mtldata-verify") for name in names)
    assert not [t for t in threading.enumerate() if t.name.startswith("mtldata-verify")]


def test_at_most_two_batches_a_thread_are_read_ahead():
    pulled = []

    def items():
        for i in range(2000):
            pulled.append(i)
            yield i

    threads = 2
    walk = checked_ahead(items(), lambda item: item, lambda _: 1, threads)
    for seen, _ in enumerate(walk, start=1):
        assert len(pulled) - seen <= (2 * threads + 1) * lookahead.BATCH_ITEMS
    assert seen == 2000


def test_a_failing_read_comes_after_the_items_before_it():
    def items():
        yield from range(70)
        raise OSError("the disk went away")

    got = []
    with pytest.raises(OSError, match="the disk went away"):
        for item, _ in checked_ahead(items(), lambda item: item, lambda _: 1, 2):
            got.append(item)
    assert got == list(range(70))


def test_a_failing_check_comes_in_its_item_s_place():
    def check(item):
        if item == 45:
            raise ValueError("item 45")
        return item

    got = []
    with pytest.raises(ValueError, match="item 45"):
        for item, _ in checked_ahead(iter(range(100)), check, lambda _: 1, 2):
            got.append(item)
    assert got == list(range(45))


def test_a_walk_left_early_leaves_no_thread_behind():
    walk = checked_ahead(iter(range(10_000)), lambda item: item, lambda _: 1, 2)
    assert next(walk) == (0, 0)
    walk.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("mtldata-verify")]
