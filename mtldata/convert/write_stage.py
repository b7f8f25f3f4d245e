"""The converter's write stage: one thread that runs the backend writer's puts and commits in order.

Every commit syncs the written data to disk. Run on the thread that also gathers decode results,
that wait stops the whole pipeline (for a 64 MB commit on a 300 MB/s disk, 0.2 s every 300
images of 256 px); on a thread of its own it overlaps decoding. LMDB wants a write transaction
used by one thread only, so every writer call goes through this one thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class WriteStage:
    """Runs submitted jobs in submission order on one thread; a job's exception stops the stage
    and is raised again in the submitting thread (at its next submit, or at `finish`)."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max(1, max_pending)
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=self.max_pending)
        self._error: BaseException | None = None
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mtldata-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is _STOP:
                    return
                job, always = job
                if not always and (self._error is not None or self._abandoned.is_set()):
                    continue  # drain what is left without running it
                try:
                    job()
                except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
                    self._error = exc
            finally:
                self._jobs.task_done()

    def drain(self) -> None:
        """Wait until every job submitted so far has run (the stage keeps going); raises the error
        of one that failed."""
        self._jobs.join()
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._abandoned.set()
            raise error

    def submit(self, job: Callable[[], None], always: bool = False) -> None:
        """Queue `job` (blocks while `max_pending` jobs wait); raises a failed earlier job's error.

        An `always` job runs even after an error or `abandon` (it hands back a resource).
        """
        self._raise_pending()
        while True:
            try:
                # A timeout, so that Ctrl-C reaches a submitter waiting on a full queue at once.
                self._jobs.put((job, always), timeout=0.5)
                return
            except queue.Full:
                self._raise_pending()
                if not self._thread.is_alive():
                    raise RuntimeError("the write stage stopped") from None

    def finish(self) -> None:
        """Wait until every job has run; raises the error of one that failed."""
        self._stop_and_join()
        self._raise_pending()

    def abandon(self) -> None:
        """Drop the jobs not started yet and wait for the running one (after an error or Ctrl-C):
        the writer is then the submitter's again, as of its last finished job."""
        self._abandoned.set()
        self._stop_and_join()
        self._error = None

    def _stop_and_join(self) -> None:
        while self._thread.is_alive():
            try:
                self._jobs.put(_STOP, timeout=0.5)
                break
            except queue.Full:
                continue
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)
