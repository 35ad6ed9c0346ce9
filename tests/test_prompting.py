"""Prompt building without HTTP or a model."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from llm_service.prompting import (
    PromptBuilder,
    PromptError,
    TemplateSpec,
    build_prompt,
    format_document,
    load_templates,
    trailer_document,
)


def test_document_format() -> None:
    doc = {"text": "Body.", "metadata": {"url": "https://x.org/a", "citation_id": 3,
                                          "Header1": "Intro", "Header3": "Deep"}}  # fmt: skip
    assert format_document(doc) == "[3] (https://x.org/a)\nSection: Intro > Deep\nContent: Body."
    file_doc = {"text": "T", "metadata": {"bucket_name": "b", "object_name": "o.pdf",
                                           "citation_id": 1}}  # fmt: skip
    assert format_document(file_doc) == "[1] (b/o.pdf)\nContent: T"
    assert format_document({"text": "no source", "metadata": {"citation_id": 9}}) == (
        "Content: no source"
    )
    assert trailer_document(file_doc) == {
        "bucket_name": "b", "object_name": "o.pdf", "type": "file", "citation_id": 1,
    }  # fmt: skip


def test_reference_prompt_has_seed_sections() -> None:
    system, user = build_prompt(
        {
            "question": "What is {x}?",
            "reranked_docs": [{"text": "Use {braces} and {{more}}", "metadata": {
                "url": "u", "citation_id": 1}}],
            "history": [{"question": "a", "answer": "b"}],
        }
    )  # fmt: skip
    assert isinstance(system, SystemMessage) and isinstance(user, HumanMessage)
    assert "### Search results:\n[1] (u)\nContent: Use {braces} and {{more}}" in system.text
    assert "### Conversation history:\nUser: a\nAssistant: b" in system.text
    assert "[1]" in system.text.split("### Search results")[0]  # citation instructions
    assert user.text == "### Question: What is {x}?\n\n### Answer:"


def test_empty_docs_and_history() -> None:
    system, _ = build_prompt({"question": "q"})
    assert "### Search results:\n\n### Conversation history:\n" in system.text


def test_ready_made_messages_pass_through() -> None:
    messages = build_prompt({"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]})  # fmt: skip
    assert [type(m) for m in messages] == [SystemMessage, HumanMessage, AIMessage]


def test_missing_question_is_an_error() -> None:
    with pytest.raises(PromptError, match="question"):
        build_prompt({"reranked_docs": []})


@pytest.mark.parametrize(
    ("system", "user", "message"),
    [
        ("{reranked_docs} {nope}", "{question}", "unknown placeholder(s) ['nope']"),
        ("no docs here", "{question}", "missing placeholder(s) ['reranked_docs']"),
        ("{reranked_docs", "{question}", "unbalanced braces"),
        ("{reranked_docs} }", "{question}", "unbalanced braces"),
        ("{reranked_docs}", "{question.x}", "invalid placeholder"),
    ],
)
def test_template_validation(system: str, user: str, message: str) -> None:
    with pytest.raises(PromptError, match="template 't'") as info:
        TemplateSpec("t", "en", system, user).validate()
    assert message in str(info.value)


def test_manifest_loading(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("Docs: {reranked_docs} {{literal}}")
    (tmp_path / "u.txt").write_text("Q: {question}")
    (tmp_path / "manifest.toml").write_text(
        '[mine]\nlanguage = "en"\nsystem = "s.txt"\nuser = "u.txt"\n'
    )
    assert set(load_templates(tmp_path)) == {"mine"}
    system, user = PromptBuilder.from_folder(tmp_path, "mine").build({"question": "hi"})
    assert system.text == "Docs:  {literal}"
    assert user.text == "Q: hi"
    with pytest.raises(PromptError, match="unknown prompt template 'other'"):
        PromptBuilder.from_folder(tmp_path, "other")
    (tmp_path / "manifest.toml").write_text('[bad]\nsystem = "missing.txt"\nuser = "u.txt"\n')
    with pytest.raises(PromptError, match="template 'bad'"):
        load_templates(tmp_path)
