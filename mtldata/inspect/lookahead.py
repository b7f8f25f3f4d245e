"""A check run in threads on the items of a stream ahead of its consumer, results kept in order.

`mtldata verify` decodes every encoded image, which is nearly all of its time; the decoders
release the GIL, so batches of records checked in threads while the walk reports the ones before
them run once per core at once, and the report keeps the order of a plain walk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

BATCH_ITEMS = 32
BATCH_BYTES = 4 << 20
MAX_THREADS = 8  # bounds what waits in memory: 2 batches a thread, each up to BATCH_BYTES


def checked_ahead(
    items: Iterator[Item],
    check: Callable[[Item], Result],
    size: Callable[[Item], int],
    threads: int,
) -> Iterator[tuple[Item, Result]]:
    """(item, check(item)) for every item, in order, `check` running in up to `threads` threads on
    batches read ahead. An exception raised by `items` comes after every item read before it;
    one raised by `check` comes where its item would have."""
    threads = max(1, min(threads, MAX_THREADS))
    if threads == 1:
        for item in items:
            yield item, check(item)
        return
    pending: deque[tuple[list[Item], Future[list[tuple[bool, object]]]]] = deque()
    failure: BaseException | None = None
    with ThreadPoolExecutor(threads, thread_name_prefix="mtldata-verify") as pool:
        try:
            batch: list[Item] = []
            held = 0
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - raised again after the items before it
                    failure = exc
                    break
                batch.append(item)
                held += size(item)
                if len(batch) >= BATCH_ITEMS or held >= BATCH_BYTES:
                    pending.append((batch, pool.submit(_check_all, check, batch)))
                    batch, held = [], 0
                    while len(pending) > 2 * threads:
                        yield from _collect(pending.popleft())
            if batch:
                pending.append((batch, pool.submit(_check_all, check, batch)))
            while pending:
                yield from _collect(pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()
    if failure is not None:
        raise failure


def _check_all(check: Callable[[Item], Result], batch: list[Item]) -> list[tuple[bool, object]]:
    """(True, result) per item, or (False, the exception) and nothing after it."""
    out: list[tuple[bool, object]] = []
    for item in batch:
        try:
            out.append((True, check(item)))
        except Exception as exc:  # noqa: BLE001 - raised by _collect in its item's place
            out.append((False, exc))
            break
    return out


def _collect(done: tuple[list[Item], Future[list[tuple[bool, object]]]]) -> Iterator[tuple[Item, Result]]:
    batch, future = done
    for item, (ok, value) in zip(batch, future.result(), strict=False):
        if not ok:
            raise value  # type: ignore[misc]
        yield item, value  # type: ignore[misc]
