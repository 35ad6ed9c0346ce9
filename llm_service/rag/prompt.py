"""The prompt step: RAG input (or ready-made messages) to the chat messages for the model.

The chain's first step turns either ready-made chat messages (the seed's form: a prompt
service upstream built them) or ``{question, reranked_docs, history}`` into the chat
messages sent to the model, within the model's context window. It is plain Python, usable
without HTTP or a model::

    from llm_service import build_prompt
    build_prompt({"question": "What is DL?", "reranked_docs": [...]})  # -> list[BaseMessage]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.runnables import Runnable, RunnableLambda

from llm_service.aio import run_sync
from llm_service.protocol.openai import ROLES, role_of
from llm_service.rag.budget import (
    Budget,
    BudgetExceeded,
    ContextReport,
    Pieces,
    counter_of,
    fit,
    tokens_for,
)
from llm_service.rag.documents import (
    format_document,
    format_history,
    format_turn,
    join_documents,
    turn_chars,
    unique_documents,
)
from llm_service.rag.templates import LIBRARY_PARAM, PromptError, PromptLibrary, PromptTemplate


@dataclass
class BuiltPrompt:
    """The messages to send, the documents that made it in, and what the budget did."""

    messages: list[dict[str, Any]]
    docs: list[Mapping[str, Any]]
    context: ContextReport | None = None


MESSAGE_KEYS = (
    "name", "tool_calls", "tool_call_id", "refusal", "function_call", "audio",
    "reasoning_content", "reasoning",
)  # fmt: skip
"""The keys of an OpenAI message besides role and content, kept as they come."""


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """OpenAI-style message dicts from dicts or LangChain messages (roles checked).

    A dict keeps its content as it is (a string, a list of parts, or null) and the keys of
    OpenAI's messages (``tool_calls``, ``tool_call_id``, ``name``...); other keys are left
    out. A LangChain message becomes its role and text."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        entry: dict[str, Any]
        if isinstance(message, BaseMessage):
            role = role_of(message.type)
            entry = {"role": role, "content": str(message.text)}
        elif isinstance(message, Mapping):
            role = role_of(str(message.get("role")))
            content = message.get("content")
            if content is None and role not in ("assistant", "function"):
                content = ""  # only these may come without content
            elif content is not None and not isinstance(content, str | list):
                content = str(content)
            entry = {"role": role, "content": content}
            for key in MESSAGE_KEYS:
                value = message.get(key)
                if value is not None:
                    entry[key] = value
        else:
            raise PromptError(f"messages.{i}: not a message: {message!r}")
        if role not in ROLES:
            raise PromptError(f"messages.{i}.role: unknown role {role!r}")
        out.append(entry)
    return out


class PromptStep:
    """Builds the model's messages from a RAG input, within the token budget.

    ``abuild`` is what the HTTP route calls directly; ``as_runnable`` wraps the same code as
    the chain's first step. Input keys: ``messages`` or ``question`` + ``reranked_docs`` +
    ``history``; optionally ``prompt_template`` (a name), ``system_prompt_template`` /
    ``user_prompt_template`` (template text) and ``max_tokens`` (for the budget).

    ``max_chars`` bounds the built prompt (the service passes ``LLM_MAX_INPUT_CHARS``): its
    size is computed from the template before anything is rendered or counted, and a prompt
    that would be larger is refused (PromptError, a 422).
    """

    def __init__(
        self, library: PromptLibrary, budget: Budget | None = None, max_chars: int | None = None
    ) -> None:
        self.library = library
        self.budget = budget  # None: no budget (e.g. build_prompt without a model server)
        self.max_chars = max_chars  # None: no bound

    def template_for(self, inp: Mapping[str, Any]) -> PromptTemplate:
        system, user = inp.get("system_prompt_template"), inp.get("user_prompt_template")
        if system is not None or user is not None:
            return self.library.custom(system, user, inp.get("prompt_template"))
        return self.library.get(inp.get("prompt_template"))

    def check(self, inp: Mapping[str, Any]) -> None:
        """What can be refused before the chain runs (PromptError): the input's templates and
        a prompt past ``max_chars``."""
        if inp.get("messages"):
            return
        question = inp.get("question")
        docs = unique_documents(inp.get("reranked_docs") or ())
        self.bound(self.template_for(inp), str(question or ""), docs, inp.get("history") or ())

    def bound(
        self,
        template: PromptTemplate,
        question: str,
        docs: Sequence[Mapping[str, Any]],
        history: Sequence[Mapping[str, Any]],
    ) -> None:
        """PromptError when what the request puts in the prompt would pass ``max_chars``: its
        own template text, and each value's characters times its placeholder's occurrences
        (the question at each ``{question}``; documents and history once). Computed from
        lengths, before anything is rendered or counted. The library's own text and the
        documents' labels are not counted: they are not the request's to multiply."""
        if self.max_chars is None:
            return
        spec = template.spec
        share = {
            "question": len(question),
            "reranked_docs": sum(len(str(d.get("text") or "")) for d in docs),
            "history": sum(turn_chars(t) for t in history),
        }
        parts = [
            (spec.system_param, template.literal_system, template.system_counts["question"]),
            (spec.user_param, template.literal_user, template.user_counts["question"]),
        ]
        own = [(asks, param) for param, _, asks in parts if param != LIBRARY_PARAM]
        for param, literal, _ in parts:
            if param != LIBRARY_PARAM:
                share[param] = share.get(param, 0) + len(literal)
        # Each {question} past the first is more text, on the account of the part repeating it.
        repeater = max(own)[1] if own and max(own)[0] else "question"
        share[repeater] = share.get(repeater, 0) + (template.counts["question"] - 1) * len(question)
        total = sum(share.values())
        if total > self.max_chars:
            param = max(share, key=lambda name: share[name])
            raise PromptError(
                f"{param}: the prompt would hold {total} characters of the request's text (its "
                f"templates, and each value times its placeholder's occurrences); the limit is "
                f"{self.max_chars}",
                param=param,
            )

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
        # Before anything is formatted, counted or sent: a prompt past the limit is refused.
        self.bound(template, question, docs, history)
        formatted_docs = [format_document(d) for d in docs]
        context: ContextReport | None = None
        budget = None
        if self.budget is not None and (formatted_docs or history):
            try:
                budget = await tokens_for(self.budget, max_tokens)
            except BudgetExceeded as exc:
                raise PromptError(str(exc), param=exc.param) from None
        if self.budget is not None and budget is not None:
            pieces = Pieces(
                fixed=[template.literal_system, template.literal_user, question],
                repeats=[1, 1, template.counts["question"]],
                docs=formatted_docs,
                history=[format_turn(t) for t in history],
            )
            try:
                counted_by = self.budget.counted_by
                fitted = await fit(pieces, budget, counter_of(self.budget), counted_by)
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

    async def amessages(self, inp: Mapping[str, Any]) -> list[BaseMessage]:
        """The chain step's work: the input's messages as LangChain messages."""
        built = await self.abuild(inp, inp.get("max_tokens"))
        return convert_to_messages(built.messages)

    def messages(self, inp: Mapping[str, Any]) -> list[BaseMessage]:
        """``amessages`` for sync callers, also inside a running loop (Jupyter)."""
        return run_sync(lambda: self.amessages(inp))

    def as_runnable(self) -> Runnable[Mapping[str, Any], list[BaseMessage]]:
        return RunnableLambda(self.messages, afunc=self.amessages, name="rag_prompt")


def build_prompt(
    inp: Mapping[str, Any], *, template: str = "default", folder: Path | None = None
) -> list[BaseMessage]:
    """Render the prompt for one input without a model, HTTP or token budget."""
    step = PromptStep(PromptLibrary.load(folder, template))
    return step.messages(inp)
