"""Byte progress of a pull or push, summed over blobs that may move in parallel threads."""

from __future__ import annotations

import threading
from collections.abc import Callable

# (done bytes, total bytes) over the whole pull or push of one image; called from any thread,
# never concurrently.
ProgressFn = Callable[[int, int], None]
# (done bytes, total bytes or None) of one blob.
BlobProgress = Callable[[int, int | None], None]


class ByteProgress:
    """Adds up per-blob progress into one image's; calls ``callback`` under a lock."""

    def __init__(self, total: int, callback: ProgressFn | None) -> None:
        self.total, self.done, self.callback = total, 0, callback
        self._lock = threading.Lock()

    def blob(self) -> BlobProgress:
        """A reporter for one blob (its own done bytes, restartable from zero)."""
        seen = [0]

        def report(done: int, _total: int | None) -> None:
            with self._lock:
                self.done += done - seen[0]
                seen[0] = done
                self._emit()

        return report

    def skip(self, size: int) -> None:
        """A blob that needs no transfer (already there)."""
        with self._lock:
            self.done += size
            self._emit()

    def _emit(self) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total)
