"""Prompt building: templates from ``prompts/``, document and history formatting.

The chain's first step turns either ready-made chat messages (the seed's form: a prompt
service upstream built them) or ``{question, reranked_docs, history}`` into the list of
chat messages sent to the model. It is plain Python, usable without HTTP or a model.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

REQUIRED_VARIABLES = frozenset({"question", "reranked_docs"})
KNOWN_VARIABLES = REQUIRED_VARIABLES | {"history"}
HEADER_KEYS = tuple(f"Header{i}" for i in range(1, 8))


class PromptError(ValueError):
    """A template or prompt input that cannot be used; the message names what is wrong."""


def bundled_prompts_dir() -> Path:
    """The prompts folder shipped with the service (inside the wheel, or the repo's)."""
    here = Path(__file__).resolve().parent
    packaged = here / "prompts"
    return packaged if packaged.is_dir() else here.parent / "prompts"


@dataclass(frozen=True)
class TemplateSpec:
    """One prompt template: a system part and a user part with named placeholders."""

    name: str
    language: str
    system: str
    user: str

    def placeholders(self) -> set[str]:
        return _placeholders(self.name, "system", self.system) | _placeholders(
            self.name, "user", self.user
        )

    def validate(self) -> None:
        found = self.placeholders()
        unknown = found - KNOWN_VARIABLES
        if unknown:
            raise PromptError(
                f"template {self.name!r}: unknown placeholder(s) {sorted(unknown)}; "
                f"allowed: {sorted(KNOWN_VARIABLES)}"
            )
        missing = REQUIRED_VARIABLES - found
        if missing:
            raise PromptError(f"template {self.name!r}: missing placeholder(s) {sorted(missing)}")


def _placeholders(name: str, part: str, text: str) -> set[str]:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as exc:  # unbalanced braces
        raise PromptError(f"template {name!r} ({part}): unbalanced braces: {exc}") from None
    for field in fields:
        if not field.isidentifier():
            raise PromptError(f"template {name!r} ({part}): invalid placeholder {{{field}}}")
    return fields


def load_templates(folder: Path) -> dict[str, TemplateSpec]:
    """Read ``manifest.toml`` in ``folder`` and every template it names, validated."""
    manifest_path = folder / "manifest.toml"
    try:
        manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PromptError(f"cannot read prompt manifest {manifest_path}: {exc}") from None
    templates: dict[str, TemplateSpec] = {}
    for name, entry in manifest.items():
        try:
            spec = TemplateSpec(
                name=name,
                language=str(entry.get("language", "")),
                system=(folder / entry["system"]).read_text(encoding="utf-8"),
                user=(folder / entry["user"]).read_text(encoding="utf-8"),
            )
        except (KeyError, OSError, TypeError, AttributeError) as exc:
            raise PromptError(f"template {name!r} in {manifest_path}: {exc}") from None
        spec.validate()
        templates[name] = spec
    if not templates:
        raise PromptError(f"{manifest_path} names no template")
    return templates


# --- documents and history -----------------------------------------------------------------


def doc_source(metadata: Mapping[str, Any]) -> str | None:
    """The document's source: its URL, or ``bucket/object`` for stored files."""
    url = metadata.get("url")
    if url:
        return str(url)
    bucket, obj = metadata.get("bucket_name"), metadata.get("object_name")
    if bucket and obj:
        return f"{bucket}/{obj}"
    return str(obj) if obj else None


def format_document(doc: Mapping[str, Any]) -> str:
    """``[citation_id] (source)``, optional ``Section: H1 > H2`` and ``Content: text``."""
    metadata = doc.get("metadata") or {}
    lines: list[str] = []
    source = doc_source(metadata)
    citation = metadata.get("citation_id")
    if source is not None:
        lines.append(f"[{citation}] ({source})" if citation is not None else f"({source})")
    section = " > ".join(str(metadata[key]) for key in HEADER_KEYS if metadata.get(key))
    if section:
        lines.append(f"Section: {section}")
    lines.append(f"Content: {doc.get('text', '')}")
    return "\n".join(lines)


def format_documents(docs: Iterable[Mapping[str, Any]]) -> str:
    return "\n\n".join(format_document(doc) for doc in docs)


def format_history(history: Sequence[Mapping[str, Any]]) -> str:
    """The seed's ChatHistory turns ``{question, answer}`` as ``User:``/``Assistant:`` lines."""
    lines: list[str] = []
    for turn in history:
        if turn.get("question"):
            lines.append(f"User: {turn['question']}")
        if turn.get("answer"):
            lines.append(f"Assistant: {turn['answer']}")
    return "\n".join(lines)


def trailer_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document as reported back to the caller: its source and scores, no text."""
    metadata = doc.get("metadata") or {}
    out: dict[str, Any] = {}
    if metadata.get("url"):
        out["url"] = metadata["url"]
        out["type"] = "link"
    elif metadata.get("object_name"):
        out["bucket_name"] = metadata.get("bucket_name")
        out["object_name"] = metadata["object_name"]
        out["type"] = "file"
    for key in ("citation_id", "vector_distance", "reranker_score"):
        if key in metadata:
            out[key] = metadata[key]
    return out


# --- the prompt step -----------------------------------------------------------------------

_ROLE_TO_MESSAGE: dict[str, type[BaseMessage]] = {
    "system": SystemMessage,
    "user": HumanMessage,
    "human": HumanMessage,
    "assistant": AIMessage,
    "ai": AIMessage,
}


def to_message(message: BaseMessage | Mapping[str, Any]) -> BaseMessage:
    """A chat message from an OpenAI-style ``{role, content}`` dict (or a message as is)."""
    if isinstance(message, BaseMessage):
        return message
    role = message.get("role")
    content = message.get("content") or ""
    if role == "tool":
        return ToolMessage(content=content, tool_call_id=str(message.get("tool_call_id", "")))
    cls = _ROLE_TO_MESSAGE.get(str(role))
    if cls is None:
        raise PromptError(f"unknown message role {role!r}")
    return cls(content=content)


class PromptBuilder:
    """Builds chat messages from a RAG input with one named template.

    ``build`` is what the HTTP route calls directly; ``as_runnable`` wraps the same function
    as the chain's first step.
    """

    def __init__(self, spec: TemplateSpec) -> None:
        self.spec = spec
        self.template = ChatPromptTemplate.from_messages(
            [("system", spec.system), ("human", spec.user)], template_format="f-string"
        )
        self._variables = spec.placeholders()

    @classmethod
    def from_folder(cls, folder: Path | None, name: str) -> PromptBuilder:
        templates = load_templates(folder or bundled_prompts_dir())
        if name not in templates:
            raise PromptError(f"unknown prompt template {name!r}; known: {sorted(templates)}")
        return cls(templates[name])

    def build(self, inp: Mapping[str, Any]) -> list[BaseMessage]:
        """Messages for ``{messages}`` or ``{question, reranked_docs, history}``."""
        messages = inp.get("messages")
        if messages:
            return [to_message(m) for m in messages]
        question = inp.get("question")
        if not isinstance(question, str) or not question.strip():
            raise PromptError("input needs non-empty 'messages' or a non-empty 'question'")
        values = {
            "question": question,
            "reranked_docs": format_documents(inp.get("reranked_docs") or ()),
            "history": format_history(inp.get("history") or ()),
        }
        return self.template.format_messages(
            **{k: v for k, v in values.items() if k in self._variables}
        )

    def as_runnable(self) -> Runnable[Mapping[str, Any], list[BaseMessage]]:
        return RunnableLambda(self.build, name="rag_prompt")


def build_prompt(
    inp: Mapping[str, Any], *, template: str = "default", folder: Path | None = None
) -> list[BaseMessage]:
    """Render the prompt for one input without any model or HTTP (handy in notebooks)."""
    return PromptBuilder.from_folder(folder, template).build(inp)
