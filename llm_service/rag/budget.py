"""Token budget: fit the RAG prompt into the model's context window minus ``max_tokens``.

Rules, in order, until the prompt fits:

1. drop the lowest-ranked documents (the last ones) while more than one is left;
2. drop the oldest history turns;
3. truncate the last remaining document (dropped if less than ``MIN_DOC_TOKENS`` would stay);
4. the question is never dropped: if it does not fit alone, the request is refused (422).

Counting is as cheap as it can be and still safe. Byte-level tokenizers never make more
tokens than UTF-8 bytes, so a prompt whose byte count fits needs no counting at all (the
common case). Otherwise each piece is counted once by the model server's tokenizer (vLLM's
``/tokenize``, llama.cpp's ``/extras/tokenize/count``) or, where there is none, by a local
estimate with a safety margin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD = 8  # tokens a chat template adds around each message (role markers etc.)
PROMPT_OVERHEAD = 16  # tokens of the generation prompt and special tokens
SEPARATOR_TOKENS = 2  # "\n\n" between documents, "\n" between history lines
MIN_DOC_TOKENS = 16
ESTIMATE_BYTES_PER_TOKEN = 2.5  # deliberately low: estimates err towards more tokens

Counter = Callable[[Sequence[str]], Awaitable[list[int]]]


def byte_bound(text: str) -> int:
    """An upper bound of the token count for byte-level BPE tokenizers."""
    return len(text.encode("utf-8"))


def estimate_tokens(text: str) -> int:
    """A local estimate that errs on the safe side (more tokens than real)."""
    return math.ceil(len(text.encode("utf-8")) / ESTIMATE_BYTES_PER_TOKEN) + 1


class Budget(Protocol):
    """Where the prompt step learns the context window and counts tokens (the model
    server, in ``llm_service.upstream.budget``)."""

    max_model_len: int | None
    default_max_tokens: int

    @property
    def counted_by(self) -> str:
        """How ``count`` counts: "server" or "estimate"."""
        ...

    async def window(self) -> int | None:
        """The model's context window in tokens, or None when it is unknown."""
        ...

    async def count(self, texts: Sequence[str]) -> list[int] | None:
        """Each text's token count, or None where nothing can count them (then the prompt
        step estimates)."""
        ...


class BudgetExceeded(ValueError):
    """The prompt cannot fit; ``param`` names the request field at fault."""

    def __init__(self, message: str, param: str = "question") -> None:
        super().__init__(message)
        self.param = param


async def tokens_for(budget: Budget, max_tokens: int | None) -> int | None:
    """Tokens the prompt may use (the window minus the answer's room), or None when the
    context window is unknown."""
    window = await budget.window()
    if window is None:
        return None
    wanted = max_tokens or budget.default_max_tokens
    if wanted >= window:
        raise BudgetExceeded(
            f"max_tokens: {wanted} leaves no room for the prompt in the model's "
            f"context window of {window} tokens",
            param="max_tokens",
        )
    return window - wanted


def counter_of(budget: Budget) -> Counter:
    """``budget.count``, estimating locally where it cannot count."""

    async def count(texts: Sequence[str]) -> list[int]:
        counts = await budget.count(texts)
        return counts if counts is not None else [estimate_tokens(t) for t in texts]

    return count


@dataclass
class ContextReport:
    """What the budget kept and dropped; returned in the response ``data.context``."""

    docs_used: int
    docs_dropped: int
    history_used: int = 0
    history_dropped: int = 0
    truncated_doc: bool = False
    prompt_tokens: int = 0  # counted, estimated or bounded (see counted_by)
    budget: int | None = None
    max_model_len: int | None = None
    counted_by: str = "none"  # "bound": no counting needed; "server"; "estimate"

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Pieces:
    """The parts of a RAG prompt, each already formatted as it will appear."""

    fixed: list[str]  # template parts with the question, without docs and history
    docs: list[str]
    history: list[str]
    truncate: Callable[[str, int], str] = field(default=lambda text, chars: text[:chars])
    # How many times each fixed piece is in the prompt (a template may repeat {question});
    # each piece is counted once and weighed by this. Empty: once each.
    repeats: list[int] = field(default_factory=list)


@dataclass
class Fitted:
    docs: list[str]
    history: list[str]
    report: ContextReport


async def fit(pieces: Pieces, budget: int, counter: Counter, counted_by: str) -> Fitted:
    """Keep as much of ``pieces`` as fits in ``budget`` tokens (see the module rules)."""
    overhead = PROMPT_OVERHEAD + MESSAGE_OVERHEAD * max(len(pieces.fixed), 1)
    sep = SEPARATOR_TOKENS
    repeats = pieces.repeats or [1] * len(pieces.fixed)
    bound = (
        overhead
        + sum(byte_bound(t) * n for t, n in zip(pieces.fixed, repeats, strict=True))
        + sum(byte_bound(t) + sep for t in pieces.docs)
        + sum(byte_bound(t) + sep for t in pieces.history)
    )
    if bound <= budget:
        report = ContextReport(
            docs_used=len(pieces.docs), docs_dropped=0, history_used=len(pieces.history),
            prompt_tokens=bound, budget=budget, counted_by="bound",
        )  # fmt: skip
        return Fitted(list(pieces.docs), list(pieces.history), report)

    texts = [*pieces.fixed, *pieces.docs, *pieces.history]
    counts = await counter(texts)
    n_fixed, n_docs = len(pieces.fixed), len(pieces.docs)
    fixed = overhead + sum(c * n for c, n in zip(counts[:n_fixed], repeats, strict=True))
    doc_counts = [c + sep for c in counts[n_fixed : n_fixed + n_docs]]
    hist_counts = [c + sep for c in counts[n_fixed + n_docs :]]
    if fixed > budget:
        raise BudgetExceeded(
            f"the question and the prompt template need about {fixed} tokens; the model's "
            f"context allows {budget} (max_model_len minus max_tokens)"
        )
    docs, history = list(pieces.docs), list(pieces.history)
    total = fixed + sum(doc_counts) + sum(hist_counts)
    while total > budget and len(docs) > 1:
        docs.pop()
        total -= doc_counts.pop()
    while total > budget and history:
        history.pop(0)
        total -= hist_counts.pop(0)
    truncated = False
    if total > budget and docs:
        room = budget - (total - doc_counts[0])  # tokens left for the last document
        if room < MIN_DOC_TOKENS:
            docs.pop()
            total -= doc_counts.pop()
        else:
            docs[0], used = await _truncate(docs[0], room - sep, counter, pieces.truncate)
            total += used + sep - doc_counts[0]
            truncated = True
    report = ContextReport(
        docs_used=len(docs), docs_dropped=n_docs - len(docs), history_used=len(history),
        history_dropped=len(pieces.history) - len(history), truncated_doc=truncated,
        prompt_tokens=total, budget=budget, counted_by=counted_by,
    )  # fmt: skip
    return Fitted(docs, history, report)


async def _truncate(
    text: str, room: int, counter: Counter, cut: Callable[[str, int], str]
) -> tuple[str, int]:
    """``text`` cut to at most ``room`` tokens; the count of what is kept."""
    (count,) = await counter([text])
    chars = len(text)
    for _ in range(6):
        chars = max(1, int(chars * room / max(count, 1) * 0.95))
        kept = cut(text, chars)
        (count,) = await counter([kept])
        if count <= room:
            return kept, count
    kept = cut(text, max(1, room))  # a token is at least one character
    return kept, (await counter([kept]))[0]
