"""Which replica a request goes to: the routing policies of ``failover.ReplicaSet``.

``least_inflight`` sends each request to the replica with the fewest requests in flight.

``prefix_affinity`` sends a prompt to the replica that was sent the longest prefix of it
before: vLLM (and SGLang, TGI, llama.cpp's slots) keep the KV blocks of recent prompts and
skip the prefill of a prefix they still hold, which in RAG is most of the prompt (the
system prompt, popular documents, the conversation so far). The prompt text, as the model
server will see it (roles and contents), is cut into blocks of ``block_chars`` characters;
block ``i`` is known by the chained hash ``h_i = hash((h_{i-1}, block_i))``, so a hash names
the whole prefix up to its block. A bounded table maps these hashes to the replica last
sent them, forgetting the least recently used first (two generations of dicts: a hash used
since the last turn-over is kept, the rest goes at the next). Characters rather than
tokens: no tokenizer on the hot path, and a prefix of equal characters is a prefix of equal
tokens up to the token that straddles the cut.

A session key (a request header, else OpenAI's ``user`` field) takes precedence once the
session has a replica: its requests stay there. A new session starts where its prompt's
prefix is, else on the least loaded replica (spreading sessions by load, not by a hash of
their keys, keeps the replicas even: a hash deals sessions out unevenly, and the load bound
then moves them, cache and all).

A prefix routes only when it covers at least ``min_match`` of the prompt's blocks (as
SGLang's ``cache_threshold``): a shorter one, such as a system prompt alone, begins most
prompts and is soon cached on every replica anyway.

Either choice yields to load: a replica whose load exceeds ``max(mean * balance, mean +
slack)`` is passed over for the least loaded one, as are replicas cooling down after a
fault, gone from discovery, or already tried for this request. Entries that point at such a
replica are skipped and overwritten by the next choice, so a dead replica's prefixes move.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_service.upstream.failover import Replica

POLICIES = ("least_inflight", "prefix_affinity")


class RouteKey:
    """What a request's routing is decided on: its session and its prompt's block hashes."""

    __slots__ = ("blocks", "session")

    def __init__(self, session: str | None, blocks: list[int]) -> None:
        self.session = session
        self.blocks = blocks  # chained hashes of the prompt's whole blocks, shallowest first


def prompt_text(payload: Mapping[str, Any]) -> str:
    """The prompt as the model server sees it, near enough for prefix matching: each
    message's role and text in order (``messages``), or ``prompt`` for completions."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            content = message.get("content")
            if isinstance(content, list):  # text parts; images and the like carry no text
                content = "".join(
                    p["text"] for p in content if isinstance(p, Mapping) and "text" in p
                )
            # The role marker keeps "user: A" + "assistant: B" apart from "user: AB".
            text = content if isinstance(content, str) else ""
            parts.append(f"\x00{message.get('role')}\x00{text}")
        return "".join(parts)
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return str(prompt[0])
    return ""


def block_hashes(text: str, block_chars: int) -> list[int]:
    """Chained hashes of the whole blocks of ``text`` (a partial last block is left out:
    model servers cache whole blocks only)."""
    hashes: list[int] = []
    h = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        h = hash((h, text[start : start + block_chars]))
        hashes.append(h)
    return hashes


def _session_hash(session: str) -> int:
    # Kept in the prefix table with the block hashes: the marker keeps it from ever
    # equalling one (a block hash is the hash of an (int, str) tuple).
    return hash(("session", session))


class LeastInflight:
    """Fewest requests in flight; ties take turns; cooled-down replicas last."""

    name = "least_inflight"

    def __init__(self) -> None:
        self._turn = 0

    def key(self, payload: Mapping[str, Any], session: str | None) -> RouteKey | None:
        """What ``pick`` needs of a request (nothing for this policy)."""
        return None

    def pick(
        self,
        replicas: Sequence[Replica],
        tried: Sequence[Replica],
        key: RouteKey | None,
        now: float,
    ) -> Replica:
        return self.least_loaded(replicas, tried, now)

    def least_loaded(
        self, replicas: Sequence[Replica], tried: Sequence[Replica], now: float
    ) -> Replica:
        """The untried replica with the least load (cooled-down ones last, the one whose
        cool-down ends first among them)."""
        count = len(replicas)
        turn = self._turn % count
        self._turn = turn + 1
        best: Replica | None = None
        best_key: tuple[bool, float] = (True, 0.0)
        for i in range(count):
            replica = replicas[(turn + i) % count]
            if replica in tried:
                continue
            down = replica.down_until > now
            key = (down, replica.down_until if down else float(replica.load))
            if best is None or key < best_key:
                best, best_key = replica, key
        assert best is not None, "every replica was tried"
        return best


class PrefixAffinity(LeastInflight):
    """The replica of the session, else of the longest known prefix, within the load bound
    (see the module docstring)."""

    name = "prefix_affinity"

    def __init__(
        self,
        *,
        block_chars: int = 256,
        table_size: int = 100_000,
        balance: float = 1.5,
        slack: int = 4,
        min_match: float = 0.5,
    ) -> None:
        super().__init__()
        if block_chars < 1 or table_size < 1 or balance < 1.0 or slack < 0:
            raise ValueError("block_chars, table_size >= 1, balance >= 1, slack >= 0")
        if not 0.0 <= min_match <= 1.0:
            raise ValueError("min_match is a fraction, from 0 to 1")
        self.min_match = min_match
        self.block_chars = block_chars
        self.table_size = table_size
        self.balance = balance
        self.slack = slack
        self._young: dict[int, Replica] = {}  # hashes used since the last turn-over
        self._old: dict[int, Replica] = {}  # the generation before, forgotten at the next
        self._retired: dict[int, Replica] = {}  # the one before that, being freed

    @property
    def table_entries(self) -> int:
        """Prompt blocks remembered now (at most about ``table_size``)."""
        return len(self._young) + len(self._old)

    def owner(self, h: int) -> Replica | None:
        """The replica last sent the prefix whose last block's hash is ``h``."""
        return self._young.get(h) or self._old.get(h)

    def key(self, payload: Mapping[str, Any], session: str | None) -> RouteKey | None:
        if session is None:
            user = payload.get("user")
            session = user if isinstance(user, str) and user else None
        blocks = block_hashes(prompt_text(payload), self.block_chars)
        if session is None and not blocks:
            return None  # too short to share a cached block: least loaded
        return RouteKey(session, blocks)

    def pick(
        self,
        replicas: Sequence[Replica],
        tried: Sequence[Replica],
        key: RouteKey | None,
        now: float,
    ) -> Replica:
        if key is None:
            return self.least_loaded(replicas, tried, now)
        total = up = 0
        for replica in replicas:
            if replica.down_until <= now:
                total += replica.load
                up += 1
        chosen: Replica | None = None
        known = 0  # the prompt's blocks from this one on are (re)recorded
        if up:
            mean = total / up
            bound = max(mean * self.balance, mean + self.slack)
            session = key.session
            if session is not None:
                # The session's replica, once it has one; a new session (or one whose
                # replica is out) goes where its prompt's prefix is, else to the least
                # loaded.
                chosen = self._usable(self.owner(_session_hash(session)), tried, now, bound)
            if chosen is None and key.blocks:
                chosen, known = self._by_prefix(tried, key.blocks, now, bound)
        if chosen is None:
            chosen = self.least_loaded(replicas, tried, now)
        if key.blocks:
            # Blocks above the deepest known one keep their replica, which holds them
            # too: rewriting them would cost a look-up each for nothing.
            self._remember(key.blocks[known:] if known else key.blocks, chosen)
        if key.session is not None:
            self._remember([_session_hash(key.session)], chosen)
        return chosen

    @staticmethod
    def _usable(
        replica: Replica | None, tried: Sequence[Replica], now: float, bound: float
    ) -> Replica | None:
        """``replica`` if a request may go there now: listed, up, untried, in bounds."""
        if (
            replica is not None
            and replica.active
            and replica.down_until <= now
            and replica not in tried
            and replica.load <= bound
        ):
            return replica
        return None

    def _by_prefix(
        self, tried: Sequence[Replica], blocks: list[int], now: float, bound: float
    ) -> tuple[Replica | None, int]:
        """The replica of the deepest known block that is usable and in bounds, if that
        block covers ``min_match`` of the prompt; and the index of the deepest known block
        (0 if none)."""
        young, old = self._young.get, self._old.get
        rejected: Replica | None = None
        known = 0
        # Shallower matches are not worth a choice: a prefix that short (a system prompt
        # alone) is shared by most prompts and so cached on every replica soon enough;
        # routing by it would only pile requests onto one replica.
        shallowest = max(0, math.ceil(len(blocks) * self.min_match) - 1)
        for i in range(len(blocks) - 1, shallowest - 1, -1):
            h = blocks[i]
            replica = young(h) or old(h)
            if replica is None or replica is rejected:
                continue
            known = known or i
            if self._usable(replica, tried, now, bound) is not None:
                return replica, known
            rejected = replica  # shallower blocks mostly name the same one: skip it cheaply
        return None, known

    def _remember(self, blocks: list[int], replica: Replica) -> None:
        young = self._young
        before = len(young)
        young.update(dict.fromkeys(blocks, replica))
        retired = self._retired
        # Freed a few at a time, as many as `young` grew: dropping a generation of tens of
        # thousands of entries at once would stall the event loop for a millisecond, and
        # at this pace `retired` is empty by the time `young` is full.
        for _ in range(min(len(young) - before, len(retired))):
            retired.popitem()
        if len(young) * 2 >= self.table_size:
            retired.clear()  # (already empty: it drains as fast as `young` fills)
            self._retired, self._old, self._young = self._old, young, {}


def make_policy(
    name: str,
    *,
    block_chars: int = 256,
    table_size: int = 100_000,
    balance: float = 1.5,
    slack: int = 4,
    min_match: float = 0.5,
) -> LeastInflight:
    """The policy called ``name`` (one of ``POLICIES``)."""
    if name == "least_inflight":
        return LeastInflight()
    if name == "prefix_affinity":
        return PrefixAffinity(
            block_chars=block_chars,
            table_size=table_size,
            balance=balance,
            slack=slack,
            min_match=min_match,
        )
    raise ValueError(f"unknown routing policy {name!r}; one of {', '.join(POLICIES)}")
