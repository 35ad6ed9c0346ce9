"""Waiting at start-up for a model server that may come up after the service."""

from __future__ import annotations

import asyncio
import logging
import time

from llm_service.errors import ServiceError
from llm_service.upstream.client import UpstreamClient

log = logging.getLogger(__name__)


async def wait_until_answers(
    client: UpstreamClient, max_wait: float, *, first_delay: float = 0.5
) -> bool:
    """Ask ``/v1/models`` with backoff (0.5 s doubling, at most 10 s between tries) until the
    model server answers or ``max_wait`` seconds have passed; True if it answered."""
    deadline = time.monotonic() + max_wait
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            models = await client.models()
        except ServiceError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                log.error(
                    "model server did not answer within LLM_STARTUP_WAIT=%g s (%s); "
                    "serving anyway, /v1/ready answers 503 until it does",
                    max_wait, exc.message,
                )  # fmt: skip
                return False
            log.info(
                "waiting for the model server (attempt %d: %s); next try in %.1f s",
                attempt, exc.message, min(delay, left),
            )  # fmt: skip
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 10.0)
            continue
        served = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
        log.info("model server answers after %d attempt(s); serves %s", attempt, served)
        return True
