"""Templates are data, never code: only plain ``{name}`` fields, and a built prompt bounded
before it is rendered."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from llm_service.rag import PromptError, PromptLibrary, PromptStep
from llm_service.rag.budget import (
    MESSAGE_OVERHEAD,
    PROMPT_OVERHEAD,
    BudgetExceeded,
    Pieces,
    fit,
)
from llm_service.rag.templates import TemplateSpec, load_templates


def build(inp: dict[str, Any], max_chars: int | None = None) -> list[dict[str, str]]:
    step = PromptStep(PromptLibrary.load(), max_chars=max_chars)
    return asyncio.run(step.abuild(inp)).messages


@pytest.mark.parametrize(
    ("field", "text", "reason"),
    [
        ("user_prompt_template", "{question:>1000000000}", "has a format spec"),
        ("user_prompt_template", "{question!r}", "has a conversion"),
        ("user_prompt_template", "{question!s:>9}", "has a conversion"),
        ("system_prompt_template", "{reranked_docs:{history}}", "has a format spec"),
        ("system_prompt_template", "{reranked_docs.__class__}", "invalid placeholder"),
        ("user_prompt_template", "{question[0]}", "invalid placeholder"),
        ("user_prompt_template", "{0} {question}", "invalid placeholder"),
        ("user_prompt_template", "{} {question}", "invalid placeholder"),
    ],
)
def test_format_specs_conversions_and_access_are_refused_naming_the_field(
    field: str, text: str, reason: str
) -> None:
    with pytest.raises(PromptError) as info:
        build({"question": "hi", field: text})
    assert info.value.param == field
    message = str(info.value)
    assert message.startswith(f"{field}: template 'request': ") and reason in message


def test_a_huge_format_spec_is_refused_without_allocating() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(PromptError, match="format spec"):
            build({"question": "hi", "user_prompt_template": "{question:>1000000000}"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


def test_an_error_quotes_a_bad_placeholder_shortened() -> None:
    with pytest.raises(PromptError) as info:
        build({"question": "hi", "user_prompt_template": "{question:" + "9" * 100_000 + "}"})
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("system_prompt_template", "{reranked_docs} {reranked_docs}"),
        ("system_prompt_template", "{reranked_docs} {history} {history}"),
        ("user_prompt_template", "{question} {reranked_docs}"),  # the library's system has it
        ("user_prompt_template", "{question} {history}"),
    ],
)
def test_documents_and_history_may_appear_once(field: str, text: str) -> None:
    with pytest.raises(PromptError, match=r"appears more than once") as info:
        build({"question": "q", field: text})
    assert info.value.param == field


def test_question_may_repeat_and_literal_braces_stay_text() -> None:
    messages = build(
        {"question": "q?", "user_prompt_template": "{question} {{not a field}} {question}"}
    )
    assert messages[1]["content"] == "q? {not a field} q?"


def test_the_rendered_size_is_bounded_before_rendering() -> None:
    inp = {"question": "x" * 1000, "user_prompt_template": "{question}" * 10_000}
    tracemalloc.start()
    try:
        with pytest.raises(PromptError) as info:
            build(inp, max_chars=2_000_000)  # 10,000 x 1,000 characters: 10 M
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.param == "user_prompt_template"
    message = str(info.value)
    assert "the prompt would hold 10000000 characters" in message
    assert message.endswith("the limit is 2000000")
    assert peak < 5 * 1024 * 1024  # the 10 M characters were never built
    assert build(inp, max_chars=10_001_000)[1]["content"] == "x" * 10_000_000


def test_a_template_of_many_placeholders_is_checked_in_little_memory() -> None:
    step = PromptStep(PromptLibrary.load(), max_chars=2_000_000)
    inp = {"question": "x" * 1000, "user_prompt_template": "{question}" * 100_000}  # 1 M
    tracemalloc.start()
    try:
        with pytest.raises(PromptError, match="would hold 100000000 characters"):
            step.check(inp)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024  # a pointer or two per placeholder, no object per piece


def test_a_value_too_large_for_a_library_template_is_blamed() -> None:
    docs = [{"text": "d" * 5000, "metadata": {}}]
    with pytest.raises(PromptError) as info:
        build({"question": "q", "reranked_docs": docs}, max_chars=4000)
    assert info.value.param == "reranked_docs"
    with pytest.raises(PromptError) as info:
        build({"question": "q" * 5000}, max_chars=4000)
    assert info.value.param == "question"


def test_prompt_step_check_refuses_before_the_chain_runs() -> None:
    step = PromptStep(PromptLibrary.load(), max_chars=1000)
    step.check({"question": "hi", "user_prompt_template": "{question}"})
    with pytest.raises(PromptError) as info:
        step.check({"question": "hi", "user_prompt_template": "{question:>9}"})
    assert info.value.param == "user_prompt_template"
    with pytest.raises(PromptError) as info:
        step.check({"question": "y" * 100, "user_prompt_template": "{question}" * 20})
    assert info.value.param == "user_prompt_template"


def test_library_templates_are_checked_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("Docs: {reranked_docs}")
    (tmp_path / "u.txt").write_text("Q: {question!r:>9}")
    (tmp_path / "manifest.toml").write_text('[bad]\nsystem = "s.txt"\nuser = "u.txt"\n')
    with pytest.raises(PromptError, match=r"template 'bad': placeholder .* has a conversion"):
        load_templates(tmp_path)
    (tmp_path / "u.txt").write_text("Q: {question} {reranked_docs}")
    with pytest.raises(PromptError, match=r"\{reranked_docs\} appears more than once"):
        load_templates(tmp_path)


def test_the_shipped_templates_pass() -> None:
    library = PromptLibrary.load()
    for name in library.specs:
        template = library.get(name)
        assert template.counts["reranked_docs"] == 1 and template.counts["question"] >= 1
    TemplateSpec("t", "en", "{reranked_docs}", "{question}").validate(["question", "reranked_docs"])


async def _words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def test_each_question_occurrence_counts_in_the_budget() -> None:
    question = "one two three four five"  # 5 tokens
    overhead = PROMPT_OVERHEAD + 3 * MESSAGE_OVERHEAD
    once = Pieces(["system", "user", question], ["a doc"], [], repeats=[1, 1, 1])
    fitted = asyncio.run(fit(once, overhead + 2 + 5 + 4, _words, "server"))
    assert fitted.report.prompt_tokens == overhead + 2 + 5 + 2 + 2  # the doc fits
    thrice = Pieces(["system", "user", question], ["a doc"], [], repeats=[1, 1, 3])
    with pytest.raises(BudgetExceeded):  # 2 + 3 x 5 tokens: more than the budget
        asyncio.run(fit(thrice, overhead + 2 + 5 + 4, _words, "server"))
