"""How much this process's memory grew while a block ran (the service under test runs in a
thread of this process)."""

from __future__ import annotations

import os
import resource
import threading
from types import TracebackType

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


def rss() -> int:
    """Resident bytes now."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE


def max_rss() -> int:
    """The highest resident bytes so far (the kernel's own peak)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RSSGrowth:
    """``with RSSGrowth() as grown: ...`` then ``grown.bytes``: the peak above the start,
    sampled every millisecond in a thread and also read from the kernel's peak, so that a
    short-lived allocation is seen too."""

    def __init__(self) -> None:
        self.bytes = 0
        self._stop = threading.Event()
        self._peak = 0
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, rss())

    def __enter__(self) -> RSSGrowth:
        self._start, self._start_max = rss(), max_rss()
        self._peak = self._start
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss())
        self.bytes = max(self._peak - self._start, max_rss() - self._start_max)
