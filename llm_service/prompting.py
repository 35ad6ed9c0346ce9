"""Prompt building: templates from ``prompts/``, documents, history and the token budget.

The chain's first step turns either ready-made chat messages (the seed's form: a prompt
service upstream built them) or ``{question, reranked_docs, history}`` into the chat
messages sent to the model. It is plain Python, usable without HTTP or a model::

    from llm_service import build_prompt
    build_prompt({"question": "What is DL?", "reranked_docs": [...]})  # -> list[BaseMessage]

Template text is a ``ChatPromptTemplate`` (f-string placeholders ``{question}``,
``{reranked_docs}``, ``{history}``); document, question and history text are values and are
never parsed as placeholders.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

from llm_service.aio import run_sync
from llm_service.budget import Budget, BudgetExceeded, ContextReport, Pieces, fit
from llm_service.documents import (
    format_document,
    format_history,
    format_turn,
    history_messages,
    join_documents,
    unique_documents,
)

REQUIRED_VARIABLES = frozenset({"question", "reranked_docs"})
KNOWN_VARIABLES = REQUIRED_VARIABLES | {"history"}
_ROLE_OF_TYPE = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}
_ROLES = {"system", "user", "assistant", "tool"}
_ROLE_ALIASES = {"human": "user", "ai": "assistant"}


class PromptError(ValueError):
    """A template or prompt input that cannot be used; the message names what is wrong.

    ``param`` names the request field at fault, for the 422 it becomes.
    """

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


def bundled_prompts_dir() -> Path:
    """The prompts folder shipped with the service (inside the wheel, or the repo's)."""
    here = Path(__file__).resolve().parent
    packaged = here / "prompts"
    return packaged if packaged.is_dir() else here.parent / "prompts"


# --- templates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateSpec:
    """One prompt template: a system part and a user part with named placeholders."""

    name: str
    language: str
    system: str
    user: str
    description: str = ""

    def placeholders(self) -> set[str]:
        return _placeholders(self.name, "system", self.system) | _placeholders(
            self.name, "user", self.user
        )

    def validate(self, declared: Sequence[str] | None = None) -> None:
        """Unknown, missing, malformed or undeclared placeholders raise PromptError."""
        found = self.placeholders()
        unknown = found - KNOWN_VARIABLES
        if unknown:
            raise PromptError(
                f"template {self.name!r}: unknown placeholder(s) {sorted(unknown)}; "
                f"allowed: {sorted(KNOWN_VARIABLES)}",
                param="prompt_template",
            )
        missing = REQUIRED_VARIABLES - found
        if missing:
            raise PromptError(
                f"template {self.name!r}: missing placeholder(s) {sorted(missing)}",
                param="prompt_template",
            )
        if declared is not None and set(declared) != found:
            raise PromptError(
                f"template {self.name!r}: manifest declares variables {sorted(declared)} "
                f"but the text uses {sorted(found)}",
                param="prompt_template",
            )


def _placeholders(name: str, part: str, text: str) -> set[str]:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as exc:
        raise PromptError(
            f"template {name!r} ({part}): unbalanced braces: {exc}", param="prompt_template"
        ) from None
    for field in fields:
        if not field.isidentifier():
            raise PromptError(
                f"template {name!r} ({part}): invalid placeholder {{{field}}}",
                param="prompt_template",
            )
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
                description=str(entry.get("description", "")),
            )
        except (KeyError, OSError, TypeError, AttributeError) as exc:
            raise PromptError(f"template {name!r} in {manifest_path}: {exc}") from None
        spec.validate(entry.get("variables"))
        templates[name] = spec
    if not templates:
        raise PromptError(f"{manifest_path} names no template")
    return templates


class PromptTemplate:
    """One validated template as a ``ChatPromptTemplate``."""

    def __init__(self, spec: TemplateSpec) -> None:
        spec.validate()
        self.spec = spec
        self.variables = spec.placeholders()
        self.chat_template = ChatPromptTemplate.from_messages(
            [("system", spec.system), ("human", spec.user)], template_format="f-string"
        )

    @property
    def has_history(self) -> bool:
        return "history" in self.variables

    def render(
        self, question: str, docs_text: str, history: Sequence[Mapping[str, Any]], history_text: str
    ) -> list[dict[str, str]]:
        values = {"question": question, "reranked_docs": docs_text, "history": history_text}
        messages = self.chat_template.format_messages(
            **{k: v for k, v in values.items() if k in self.variables}
        )
        out = [{"role": _ROLE_OF_TYPE[m.type], "content": str(m.content)} for m in messages]
        if history and not self.has_history:  # history as prior chat turns instead
            out[1:1] = history_messages(history)
        return out


class PromptLibrary:
    """The named templates of a prompts folder, plus per-request custom ones."""

    def __init__(self, templates: Mapping[str, TemplateSpec], default: str) -> None:
        if default not in templates:
            raise PromptError(
                f"unknown prompt template {default!r}; known: {sorted(templates)}",
                param="prompt_template",
            )
        self.specs = dict(templates)
        self.default = default
        self._compiled: dict[str, PromptTemplate] = {}

    @classmethod
    def load(cls, folder: Path | None = None, default: str = "default") -> PromptLibrary:
        return cls(load_templates(folder or bundled_prompts_dir()), default)

    def get(self, name: str | None = None) -> PromptTemplate:
        name = name or self.default
        compiled = self._compiled.get(name)
        if compiled is None:
            spec = self.specs.get(name)
            if spec is None:
                raise PromptError(
                    f"unknown prompt template {name!r}; known: {sorted(self.specs)}",
                    param="prompt_template",
                )
            compiled = self._compiled[name] = PromptTemplate(spec)
        return compiled

    def custom(self, system: str | None, user: str | None, base: str | None) -> PromptTemplate:
        """A template from request strings; a missing part comes from ``base``."""
        fallback = self.get(base).spec
        spec = TemplateSpec(
            name="request",
            language=fallback.language,
            system=system if system is not None else fallback.system,
            user=user if user is not None else fallback.user,
        )
        return PromptTemplate(spec)


# --- the prompt step -----------------------------------------------------------------------


@dataclass
class BuiltPrompt:
    """The messages to send, the documents that made it in, and what the budget did."""

    messages: list[dict[str, str]]
    docs: list[Mapping[str, Any]]
    context: ContextReport | None = None


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """OpenAI-style message dicts from dicts or LangChain messages (roles checked)."""
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        content: Any
        if isinstance(message, BaseMessage):
            role, content = _ROLE_OF_TYPE.get(message.type, message.type), str(message.text)
        elif isinstance(message, Mapping):
            role = str(message.get("role"))
            role = _ROLE_ALIASES.get(role, role)
            content = message.get("content") or ""
        else:
            raise PromptError(f"messages.{i}: not a message: {message!r}")
        if role not in _ROLES:
            raise PromptError(f"messages.{i}.role: unknown role {role!r}")
        entry = {"role": role, "content": str(content)}
        if role == "tool" and isinstance(message, Mapping) and message.get("tool_call_id"):
            entry["tool_call_id"] = str(message["tool_call_id"])
        out.append(entry)
    return out


class PromptStep:
    """Builds the model's messages from a RAG input, within the token budget.

    ``abuild`` is what the HTTP route calls directly; ``as_runnable`` wraps the same code as
    the chain's first step. Input keys: ``messages`` or ``question`` + ``reranked_docs`` +
    ``history``; optionally ``prompt_template`` (a name), ``system_prompt_template`` /
    ``user_prompt_template`` (template text) and ``max_tokens`` (for the budget).
    """

    def __init__(self, library: PromptLibrary, budget: Budget | None = None) -> None:
        self.library = library
        self.budget = budget  # None: no budget (e.g. build_prompt without a model server)

    def template_for(self, inp: Mapping[str, Any]) -> PromptTemplate:
        system, user = inp.get("system_prompt_template"), inp.get("user_prompt_template")
        if system is not None or user is not None:
            return self.library.custom(system, user, inp.get("prompt_template"))
        return self.library.get(inp.get("prompt_template"))

    async def abuild(self, inp: Mapping[str, Any], max_tokens: int | None = None) -> BuiltPrompt:
        messages = inp.get("messages")
        if messages:
            return BuiltPrompt(normalize_messages(messages), list(inp.get("reranked_docs") or ()))
        question = inp.get("question")
        if not isinstance(question, str) or not question.strip():
            raise PromptError("question: give non-empty 'messages' or a non-empty 'question'")
        template = self.template_for(inp)
        docs = unique_documents(inp.get("reranked_docs") or ())
        history: list[Mapping[str, Any]] = list(inp.get("history") or ())
        formatted_docs = [format_document(d) for d in docs]
        context: ContextReport | None = None
        budget = None
        if self.budget is not None and (formatted_docs or history):
            budget = await self.budget.tokens_for(max_tokens)
        if self.budget is not None and budget is not None:
            pieces = Pieces(
                fixed=[template.spec.system, template.spec.user, question],
                docs=formatted_docs,
                history=[format_turn(t) for t in history],
            )
            try:
                fitted = await fit(pieces, budget, self.budget.count, self.budget.counted_by)
            except BudgetExceeded as exc:
                raise PromptError(str(exc), param="question") from None
            context = fitted.report
            context.max_model_len = self.budget.max_model_len
            formatted_docs, docs = fitted.docs, docs[: len(fitted.docs)]
            history = history[len(history) - len(fitted.history) :]
        else:
            context = ContextReport(docs_used=len(docs), docs_dropped=0, history_used=len(history))
        messages = template.render(
            question, join_documents(formatted_docs), history, format_history(history)
        )
        return BuiltPrompt(messages, docs, context)

    async def _arun(self, inp: Mapping[str, Any]) -> list[BaseMessage]:
        built = await self.abuild(inp, inp.get("max_tokens"))
        return convert_to_messages(built.messages)

    def _run(self, inp: Mapping[str, Any]) -> list[BaseMessage]:
        return run_sync(lambda: self._arun(inp))

    def as_runnable(self) -> Runnable[Mapping[str, Any], list[BaseMessage]]:
        return RunnableLambda(self._run, afunc=self._arun, name="rag_prompt")


def build_prompt(
    inp: Mapping[str, Any], *, template: str = "default", folder: Path | None = None
) -> list[BaseMessage]:
    """Render the prompt for one input without a model, HTTP or token budget."""
    step = PromptStep(PromptLibrary.load(folder, template))
    return step._run(inp)
