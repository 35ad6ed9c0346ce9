"""A seeded RAG trace: who asks what, with which documents, when.

Every prompt is a shared system prompt, then the session's turns so far: each user turn
holds ``docs_per_request`` documents drawn from a Zipf distribution over the corpus (in
rank order, as a reranker would give them) and a question; each earlier turn is followed
by a fixed assistant answer, so that a session's later turns extend its earlier prompts.
Sessions start as a Poisson process (at the target rate over the mean number of turns); a
session's turns are separated by exponential think times; the trace is the first
``requests`` requests in time order, from a steady state (sessions started earlier are
already under way: a few first requests are later turns of sessions whose earlier turns
were never sent). All text is words, so
that the replicas' token count (words) is exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TraceConfig:
    requests: int = 400
    seed: int = 1
    corpus_docs: int = 300
    doc_tokens: int = 200
    docs_per_request: int = 3
    zipf_s: float = 1.1  # P(rank r) ~ 1 / r**s
    system_tokens: int = 400
    question_tokens: int = 24
    answer_tokens: int = 32  # max_tokens of each request, and the length of past answers
    mean_turns: float = 2.5  # turns per session (geometric, at least 1)
    think_s: float = 1.5  # mean seconds between a session's turns


@dataclass(frozen=True)
class Request:
    at: float  # seconds after the start of the replay
    session: str
    turn: int
    messages: list[dict[str, str]]
    max_tokens: int

    def body(self, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "stream": True,
            "temperature": 0,
            "user": self.session,
        }


@dataclass(frozen=True)
class Trace:
    config: TraceConfig
    rate: float  # requests per second the arrivals aim at
    requests: list[Request]

    @property
    def duration(self) -> float:
        return self.requests[-1].at if self.requests else 0.0


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def prompt_tokens(request: Request) -> int:
    """The prompt's length in the replicas' tokens (bench.fleet.replicas.render_chat)."""
    return sum(1 + len(m["content"].split()) for m in request.messages) + 1


def build_trace(config: TraceConfig, rate: float) -> Trace:
    rng = random.Random(config.seed)
    system = "### You are a helpful assistant. Answer from the search results. " + words(
        "sys", config.system_tokens - 11
    )
    docs = [words(f"d{i}x", config.doc_tokens) for i in range(config.corpus_docs)]
    weights = [1 / (rank + 1) ** config.zipf_s for rank in range(config.corpus_docs)]
    session_rate = rate / config.mean_turns
    requests: list[Request] = []
    # Sessions start this long before the replay so that it begins in the steady state
    # (later turns arriving as often as first ones); their requests before 0 are dropped.
    start = -4 * config.think_s * config.mean_turns
    n_session = 0
    # Sessions keep starting while a new one could still place a request among the first.
    while len(requests) < config.requests or start < _nth_at(requests, config.requests):
        start += rng.expovariate(session_rate)
        session = f"s{config.seed}-{n_session}"
        n_session += 1
        turns = 1
        while rng.random() > 1 / config.mean_turns:
            turns += 1
        messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        at = start
        for turn in range(turns):
            chosen: list[int] = []
            while len(chosen) < config.docs_per_request:
                (doc,) = rng.choices(range(config.corpus_docs), weights)
                if doc not in chosen:
                    chosen.append(doc)
            question = words(f"q{session}t{turn}w", config.question_tokens)
            user = (
                "### Search results: "
                + " ".join(docs[d] for d in chosen)
                + " ### Question: "
                + question
            )
            messages = [*messages, {"role": "user", "content": user}]
            if at >= 0:
                requests.append(Request(at, session, turn, messages, config.answer_tokens))
            answer = words(f"a{session}t{turn}w", config.answer_tokens)
            messages = [*messages, {"role": "assistant", "content": answer}]
            at += rng.expovariate(1 / config.think_s)
    requests.sort(key=lambda r: r.at)
    return Trace(config, rate, requests[: config.requests])


def _nth_at(requests: list[Request], n: int) -> float:
    return sorted(r.at for r in requests)[n - 1]
