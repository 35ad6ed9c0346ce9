"""Prompt templates: the library of ``prompts/`` and templates sent with a request.

Template text is a ``ChatPromptTemplate`` (f-string placeholders ``{question}``,
``{reranked_docs}``, ``{history}``); document, question and history text are values and are
never parsed as placeholders.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from langchain_core.prompts import ChatPromptTemplate

from llm_service.protocol.openai import role_of
from llm_service.rag.documents import history_messages

REQUIRED_VARIABLES = frozenset({"question", "reranked_docs"})
KNOWN_VARIABLES = REQUIRED_VARIABLES | {"history"}


class PromptError(ValueError):
    """A template or prompt input that cannot be used; the message names what is wrong.

    ``param`` names the request field at fault, for the 422 it becomes.
    """

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


def bundled_prompts_dir() -> Path:
    """The prompts folder shipped with the service: package data inside an installed wheel,
    else the repository's top-level ``prompts/`` (a source checkout or editable install)."""
    packaged = Path(str(resources.files("llm_service"))) / "prompts"
    return packaged if packaged.is_dir() else packaged.parent.parent / "prompts"


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
        out = [{"role": role_of(m.type), "content": str(m.content)} for m in messages]
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
