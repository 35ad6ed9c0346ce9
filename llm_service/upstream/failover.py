"""Replicas of one model server: which one gets a request, and trying the next on a fault.

Each request goes to the replica with the fewest requests in flight (ties take turns); a
replica that fails is left out for the cooldown, and a request whose replica failed before
answering is sent to the next one. Only ``faults.REPLICA_FAULTS`` move a request: a 400 or
a timeout waiting for the first token would fail the same way anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from llm_service.errors import UpstreamError
from llm_service.upstream.faults import REPLICA_FAULTS
from llm_service.upstream.redact import safe_url

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Replica:
    """One URL of the model server, with its load and health as this process sees them."""

    url: str
    chat_url: str
    in_flight: int = 0  # requests sent to it and not finished
    down_until: float = 0.0  # monotonic time until which it is left out after a failure

    @contextmanager
    def busy(self) -> Iterator[None]:
        """One request in flight for the duration."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


class ReplicaSet:
    """The replicas of ``urls`` and the choice between them."""

    def __init__(self, urls: Sequence[str], *, cooldown: float = 10.0) -> None:
        self.replicas = [
            Replica(url, f"{url}/v1/chat/completions")
            for url in (u.strip().rstrip("/") for u in urls)
            if url
        ]
        if not self.replicas:
            raise ValueError("no model server URL")
        self.cooldown = cooldown
        self._turn = 0

    def pick(self, tried: Sequence[Replica]) -> Replica:
        """The untried replica with the fewest requests in flight (cooled-down ones last)."""
        replicas = self.replicas
        if len(replicas) == 1:
            return replicas[0]
        now = time.monotonic()
        count = len(replicas)
        turn = self._turn
        self._turn = (turn + 1) % count
        best: Replica | None = None
        best_key: tuple[bool, float] = (True, 0.0)
        for i in range(count):
            replica = replicas[(turn + i) % count]
            if replica in tried:
                continue
            down = replica.down_until > now
            key = (down, replica.down_until if down else float(replica.in_flight))
            if best is None or key < best_key:
                best, best_key = replica, key
        assert best is not None, "every replica was tried"
        return best

    def failed(self, replica: Replica, exc: UpstreamError) -> None:
        if len(self.replicas) > 1:
            replica.down_until = time.monotonic() + self.cooldown
            log.warning(
                "replica %s failed (%s); left out for %.0f s",
                safe_url(replica.url), exc.message, self.cooldown,
            )  # fmt: skip

    async def call(self, attempt: Callable[[Replica], Awaitable[T]]) -> T:
        """``attempt`` on the best replica, then on the next after each replica fault, until
        one succeeds or every replica has failed (the last fault is raised)."""
        tried: list[Replica] = []
        while True:
            replica = self.pick(tried)
            tried.append(replica)
            try:
                return await attempt(replica)
            except REPLICA_FAULTS as exc:
                self.failed(replica, exc)
                if len(tried) >= len(self.replicas):
                    raise
