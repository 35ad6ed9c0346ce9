"""Reranked documents and conversation history: how they enter the prompt and leave it.

Documents are TextDoc-like dicts ``{text, metadata: {url | bucket_name + object_name,
citation_id, vector_distance, reranker_score, Header1..Header7}}``, best-ranked first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llm_service.protocol.openai import content_text
from llm_service.protocol.reranked import NotReranked, to_reranked_doc

HEADER_KEYS = tuple(f"Header{i}" for i in range(1, 8))
_CITATION = re.compile(r"\[(\w{1,32})\]")


def doc_source(metadata: Mapping[str, Any]) -> str | None:
    """The document's source: its URL, or ``bucket/object`` for stored files."""
    url = metadata.get("url")
    if url:
        return str(url)
    bucket, obj = metadata.get("bucket_name"), metadata.get("object_name")
    if bucket and obj:
        return f"{bucket}/{obj}"
    return str(obj) if obj else None


def citation_of(doc: Mapping[str, Any]) -> Any | None:
    """The id a document may be cited by: only documents with a source and an id have one."""
    metadata = doc.get("metadata") or {}
    citation = metadata.get("citation_id")
    if citation is None or citation == "" or doc_source(metadata) is None:
        return None
    return citation


def format_document(doc: Mapping[str, Any]) -> str:
    """``[citation_id] (source)``, optional ``Section: H1 > H2`` and ``Content: text``.

    A document with no usable source is still included, without a citation id.
    """
    metadata = doc.get("metadata") or {}
    lines: list[str] = []
    source = doc_source(metadata)
    citation = citation_of(doc)
    if source is not None:
        lines.append(f"[{citation}] ({source})" if citation is not None else f"({source})")
    section = " > ".join(str(metadata[key]) for key in HEADER_KEYS if metadata.get(key))
    if section:
        lines.append(f"Section: {section}")
    lines.append(f"Content: {doc.get('text', '')}")
    return "\n".join(lines)


def join_documents(formatted: Iterable[str]) -> str:
    return "\n\n".join(formatted)


def unique_documents(docs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Documents with the same text (ignoring surrounding whitespace) are sent once:
    the best-ranked copy is kept."""
    seen: set[str] = set()
    out: list[Mapping[str, Any]] = []
    for doc in docs:
        key = str(doc.get("text", "")).strip()
        if key in seen:
            continue
        seen.add(key)
        out.append(doc)
    return out


def format_turn(turn: Mapping[str, Any]) -> str:
    """One history item, either the seed's ``{question, answer}`` or an OpenAI message."""
    if "role" in turn:
        speaker = "User" if turn["role"] == "user" else "Assistant"
        if turn["role"] == "system":
            speaker = "System"
        return f"{speaker}: {content_text(turn.get('content'))}"
    lines = []
    if turn.get("question"):
        lines.append(f"User: {turn['question']}")
    if turn.get("answer"):
        lines.append(f"Assistant: {turn['answer']}")
    return "\n".join(lines)


def turn_chars(turn: Mapping[str, Any]) -> int:
    """Characters of text in one history item: its content, or its question and answer."""
    content = len(content_text(turn.get("content")))
    return content + sum(len(str(turn.get(key) or "")) for key in ("question", "answer"))


def format_history(history: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(line for line in (format_turn(t) for t in history) if line)


def history_messages(history: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """History as prior chat turns, for templates without a ``{history}`` slot."""
    out: list[dict[str, str]] = []
    for turn in history:
        if "role" in turn:
            out.append({"role": str(turn["role"]), "content": content_text(turn.get("content"))})
            continue
        if turn.get("question"):
            out.append({"role": "user", "content": str(turn["question"])})
        if turn.get("answer"):
            out.append({"role": "assistant", "content": str(turn["answer"])})
    return out


def reported_documents(docs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The documents as the reference reports sources (``protocol.reranked``): links and
    files, with their text and scores. A document without a source is in the prompt but not
    listed (it can be neither shown as a source nor cited), and so is one whose source or
    scores the reference's types refuse (a reader of the list may rely on them)."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        try:
            out.append(to_reranked_doc(doc))
        except NotReranked:
            continue
    return out


def answer_data(
    reported: list[dict[str, Any]] | None,
    docs: Sequence[Mapping[str, Any]],
    answer_text: str,
    context: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The RAG form's GeneratedDoc ``data`` and stream trailer.

    ``reranked_docs`` in the reference's shape, so that a pipeline reading
    ``data.reranked_docs[i].url`` works with either form: the request's own
    ``data.reranked_docs`` (``reported``, converted) when it gave them, else the documents
    that made it into the prompt. Then the citation ids the answer used and what the token
    budget did."""
    out: dict[str, Any] = {
        "reranked_docs": reported if reported is not None else reported_documents(docs),
        "citations": cited_ids(answer_text, (citation_of(d) for d in docs)),
    }
    if context is not None:
        out["context"] = dict(context)
    return out


def cited_ids(answer: str, citable: Iterable[Any]) -> list[Any]:
    """Citation ids the answer used (``[n]``), in order of first use, only ids that exist."""
    by_text = {str(c): c for c in citable if c is not None}
    found: list[Any] = []
    for match in _CITATION.finditer(answer):
        citation = by_text.get(match.group(1))
        if citation is not None and citation not in found:
            found.append(citation)
    return found
