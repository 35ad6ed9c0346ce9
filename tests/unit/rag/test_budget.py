"""The token budget: what is dropped, in which order, and that the question never is."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from llm_service.rag.budget import (
    MESSAGE_OVERHEAD,
    PROMPT_OVERHEAD,
    BudgetExceeded,
    Fitted,
    Pieces,
    estimate_tokens,
    fit,
)

OVERHEAD = PROMPT_OVERHEAD + 3 * MESSAGE_OVERHEAD


async def words(texts: Sequence[str]) -> list[int]:
    """A deterministic tokenizer for the tests: one token per word."""
    return [len(t.split()) for t in texts]


def run(pieces: Pieces, budget: int) -> Fitted:
    return asyncio.run(fit(pieces, budget, words, "server"))


def doc(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


FIXED = ["system words here", "user", "the question"]  # 6 words


def test_small_prompt_needs_no_counting() -> None:
    async def never(texts: Sequence[str]) -> list[int]:
        raise AssertionError("counted although the byte bound fits")

    fitted = asyncio.run(fit(Pieces(FIXED, ["a doc"], ["User: hi"]), 10_000, never, "server"))
    assert fitted.report.counted_by == "bound"
    assert fitted.report.docs_used == 1 and fitted.report.docs_dropped == 0


def test_lowest_ranked_docs_dropped_first() -> None:
    docs = [doc(100, "a"), doc(100, "b"), doc(100, "c"), doc(100, "d")]
    budget = OVERHEAD + 6 + 2 * 102 + 10
    fitted = run(Pieces(FIXED, docs, []), budget)
    assert fitted.docs == docs[:2]
    assert fitted.report.docs_used == 2 and fitted.report.docs_dropped == 2
    assert fitted.report.prompt_tokens <= budget
    assert fitted.report.counted_by == "server"


def test_history_dropped_oldest_first_after_docs() -> None:
    docs = [doc(50, "a"), doc(50, "b")]
    history = [doc(40, "old"), doc(40, "mid"), doc(40, "new")]
    budget = OVERHEAD + 6 + 52 + 42 + 5
    fitted = run(Pieces(FIXED, docs, history), budget)
    assert fitted.docs == docs[:1]  # docs first, down to one
    assert fitted.history == history[2:]  # then the oldest turns
    assert fitted.report.history_dropped == 2
    assert not fitted.report.truncated_doc


def test_last_document_truncated_then_dropped() -> None:
    huge = doc(5000, "h")
    budget = OVERHEAD + 6 + 300
    fitted = run(Pieces(FIXED, [huge, doc(10)], [doc(20)]), budget)
    assert fitted.report.truncated_doc and fitted.report.docs_used == 1
    assert fitted.report.history_dropped == 1
    assert huge.startswith(fitted.docs[0]) and 200 < len(fitted.docs[0].split()) <= 298
    assert fitted.report.prompt_tokens <= budget
    # Too little room for a useful piece of the document: it goes entirely.
    tiny = run(Pieces(FIXED, [huge], []), OVERHEAD + 6 + 10)
    assert tiny.docs == [] and tiny.report.docs_dropped == 1


def test_question_is_never_dropped() -> None:
    with pytest.raises(BudgetExceeded, match="the question and the prompt template need"):
        run(Pieces(["s", "u", doc(500, "q")], [doc(10)], []), OVERHEAD + 100)


def test_many_docs_unicode_and_empty() -> None:
    docs = [f"[{i}] 文档 {doc(30, 'z')}" for i in range(300)]
    fitted = run(Pieces(FIXED, docs, []), 2000)
    assert 0 < fitted.report.docs_used < 300
    assert fitted.docs == docs[: fitted.report.docs_used]
    empty = run(Pieces(FIXED, [], []), 2000)
    assert empty.docs == [] and empty.report.docs_used == 0


def test_estimate_errs_towards_more_tokens() -> None:
    assert estimate_tokens("hello world, this is English text.") >= 8
    assert estimate_tokens("深度学习是机器学习的一个分支") >= 14  # ~1 token per CJK char
