"""Replicas of one model server: which one gets a request, and trying the next on a fault.

Each request goes to the replica its routing policy picks (``routing.py``: least in-flight,
or prefix affinity within a load bound); a replica that fails is left out for the cooldown,
and a request whose replica failed before answering is sent to the next one. Only
``faults.REPLICA_FAULTS`` move a request: a 400 or a timeout waiting for the first token
would fail the same way anywhere. The set of replicas may change while requests run
(``discovery.py``): a request keeps the replica it was sent to.
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
from llm_service.upstream.routing import LeastInflight, RouteKey

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Replica:
    """One URL of the model server, with its load and health as this process sees them."""

    url: str
    chat_url: str
    in_flight: int = 0  # requests sent to it and not finished
    down_until: float = 0.0  # monotonic time until which it is left out after a failure
    external: int = 0  # requests of other clients it reported at its last metrics poll
    active: bool = True  # False once discovery no longer lists it

    @property
    def load(self) -> int:
        """Requests it is serving, as far as this process knows."""
        return self.in_flight + self.external

    @contextmanager
    def busy(self) -> Iterator[None]:
        """One request in flight for the duration."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


def _replica(url: str) -> Replica:
    return Replica(url, f"{url}/v1/chat/completions")


class ReplicaSet:
    """The replicas of ``urls`` and the choice between them (by ``policy``)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown: float = 10.0,
        policy: LeastInflight | None = None,
    ) -> None:
        self.replicas = [_replica(url) for url in _clean(urls)]
        if not self.replicas:
            raise ValueError("no model server URL")
        self.cooldown = cooldown
        self.policy = policy or LeastInflight()

    def pick(self, tried: Sequence[Replica], key: RouteKey | None = None) -> Replica:
        """The replica for the next attempt of a request (see ``routing.py``)."""
        replicas = self.replicas
        if len(replicas) == 1:
            return replicas[0]
        return self.policy.pick(replicas, tried, key, time.monotonic())

    def update(self, urls: Sequence[str]) -> None:
        """Make ``urls`` the replicas (discovery): known ones keep their load and health,
        dropped ones are marked inactive (requests on them finish there). An empty list
        changes nothing: a failed look-up should not take every replica away."""
        wanted = _clean(urls)
        if not wanted:
            return
        known = {r.url: r for r in self.replicas}
        replicas = [known.get(url) or _replica(url) for url in wanted]
        if [r.url for r in replicas] == list(known):
            return
        kept = {id(r) for r in replicas}
        for replica in self.replicas:
            if id(replica) not in kept:
                replica.active = False
        self.replicas = replicas
        log.info("replicas now %s", ", ".join(safe_url(r.url) for r in replicas))

    def failed(self, replica: Replica, exc: UpstreamError) -> None:
        if len(self.replicas) > 1:
            replica.down_until = time.monotonic() + self.cooldown
            log.warning(
                "replica %s failed (%s); left out for %.0f s",
                safe_url(replica.url), exc.message, self.cooldown,
            )  # fmt: skip

    async def call(
        self, attempt: Callable[[Replica], Awaitable[T]], key: RouteKey | None = None
    ) -> T:
        """``attempt`` on the best replica for ``key``, then on the next after each replica
        fault, until one succeeds or every replica has failed (the last fault is raised)."""
        tried: list[Replica] = []
        while True:
            replica = self.pick(tried, key)
            tried.append(replica)
            try:
                return await attempt(replica)
            except REPLICA_FAULTS as exc:
                self.failed(replica, exc)
                if len(tried) >= len(self.replicas):
                    raise


def _clean(urls: Sequence[str]) -> list[str]:
    """The URLs without blanks, trailing slashes or repeats, in order."""
    return list(dict.fromkeys(url for url in (u.strip().rstrip("/") for u in urls) if url))
