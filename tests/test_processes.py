import multiprocessing
import os

import pytest

from mtldata.storage.processes import current_pid


def _report(queue) -> None:
    queue.put((current_pid(), os.getpid()))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_current_pid_is_the_childs_own_after_fork_and_spawn(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method on this platform")
    assert current_pid() == os.getpid()
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(target=_report, args=(queue,))
    child.start()
    cached, real = queue.get(timeout=60)
    child.join(timeout=60)
    assert cached == real != os.getpid()
