"""Prompt templates: the library of ``prompts/`` and templates sent with a request.

Template text is data, never code: its only placeholders are plain ``{question}``,
``{reranked_docs}`` and ``{history}`` fields (``{{`` and ``}}`` are literal braces). Format
specs (``{question:>9}``), conversions (``{question!r}``), attribute and index access are
refused, and ``{reranked_docs}`` and ``{history}`` appear at most once, so the rendered size
is known before anything is rendered: the template's literal text plus each value's length
times its occurrences. Only a template that passed these checks, and whose prompt fits,
becomes a ``ChatPromptTemplate``; document, question and history text are values, never
parsed as placeholders.
"""

from __future__ import annotations

import string
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from langchain_core.prompts import ChatPromptTemplate

from llm_service.protocol.openai import role_of
from llm_service.rag.documents import history_messages

REQUIRED_VARIABLES = frozenset({"question", "reranked_docs"})
KNOWN_VARIABLES = REQUIRED_VARIABLES | {"history"}
ONCE_VARIABLES = frozenset({"reranked_docs", "history"})
"""Placeholders that may appear once: the token budget fits documents and history once."""

_NAMES = {name: name for name in KNOWN_VARIABLES}

LIBRARY_PARAM = "prompt_template"
SHOWN_CHARS = 40  # of a bad placeholder quoted in an error (the request may hold megabytes)


class Part(NamedTuple):
    """One parsed part: ``literals[i]`` then placeholder ``fields[i]`` (None after the last
    literal). Two flat tuples of shared strings: a template of many placeholders costs a
    pointer or two per placeholder while it is checked, not an object per piece."""

    literals: tuple[str, ...]
    fields: tuple[str | None, ...]


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


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


@dataclass(frozen=True)
class TemplateSpec:
    """One prompt template: a system part and a user part with named placeholders.

    ``system_param`` / ``user_param`` name the request field each part came from, for the
    422 a bad part becomes (``prompt_template`` for the library's templates).
    """

    name: str
    language: str
    system: str
    user: str
    description: str = ""
    system_param: str = LIBRARY_PARAM
    user_param: str = LIBRARY_PARAM

    def error(self, param: str, message: str) -> PromptError:
        """A PromptError; a request's own template text is named first, as 422s name it."""
        prefix = f"{param}: " if param != LIBRARY_PARAM else ""
        return PromptError(f"{prefix}template {self.name!r}: {message}", param=param)

    def parts(self) -> tuple[Part, Part]:
        """Both parts parsed and checked (see the module docstring), or PromptError."""
        system = _parse(self, "system", self.system, self.system_param)
        user = _parse(self, "user", self.user, self.user_param)
        seen: Counter[str] = Counter()
        for part, pieces, param in (("system", system, self.system_param),
                                    ("user", user, self.user_param)):  # fmt: skip
            for field in pieces.fields:
                if field is None:
                    continue
                if field not in KNOWN_VARIABLES:
                    raise self.error(
                        param,
                        f"unknown placeholder(s) [{_shown(field)!r}] in its {part} part; "
                        f"allowed: {sorted(KNOWN_VARIABLES)}",
                    )
                seen[field] += 1
                if field in ONCE_VARIABLES and seen[field] > 1:
                    raise self.error(
                        param,
                        f"{{{field}}} appears more than once (its {part} part); "
                        f"{{reranked_docs}} and {{history}} may appear once each",
                    )
        missing = REQUIRED_VARIABLES - set(seen)
        if missing:
            param = self.user_param if "question" in missing else self.system_param
            raise self.error(param, f"missing placeholder(s) {sorted(missing)}")
        return system, user

    def placeholders(self) -> set[str]:
        system, user = self.parts()
        return {field for field in (*system.fields, *user.fields) if field is not None}

    def validate(self, declared: Sequence[str] | None = None) -> None:
        """Unknown, missing, repeated, malformed or undeclared placeholders raise PromptError."""
        found = self.placeholders()
        if declared is not None and set(declared) != found:
            raise self.error(
                LIBRARY_PARAM,
                f"manifest declares variables {sorted(declared)} but the text uses {sorted(found)}",
            )


def _parse(spec: TemplateSpec, part: str, text: str, param: str) -> Part:
    """``text`` as literal pieces and placeholder names; anything but ``{name}`` refused."""
    literals: list[str] = []
    fields: list[str | None] = []
    parsed = iter(string.Formatter().parse(text))  # lazily: one piece at a time
    while True:
        try:
            literal, field, format_spec, conversion = next(parsed)
        except StopIteration:
            break
        except ValueError as exc:
            raise spec.error(param, f"unbalanced braces in its {part} part: {exc}") from None
        if field is not None:
            if conversion or format_spec or not field.isidentifier():
                raise _bad_placeholder(spec, param, part, field, conversion, format_spec)
            field = _NAMES.get(field, field)  # one shared string per name
        literals.append(literal)
        fields.append(field)
    return Part(tuple(literals), tuple(fields))


def _bad_placeholder(
    spec: TemplateSpec,
    param: str,
    part: str,
    field: str,
    conversion: str | None,
    format_spec: str | None,
) -> PromptError:
    written = "{" + field
    written += f"!{conversion}" if conversion else ""
    written += f":{format_spec}" if format_spec else ""
    written = _shown(written + "}")
    if not field.isidentifier():
        return spec.error(param, f"invalid placeholder {written} in its {part} part")
    kind = "conversion" if conversion else "format spec"
    return spec.error(
        param,
        f"placeholder {written} in its {part} part has a {kind}; placeholders are plain "
        "{name} fields (templates are text, not code)",
    )


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
    """One validated template: its parsed parts, their literal size and placeholder counts."""

    def __init__(self, spec: TemplateSpec) -> None:
        self.spec = spec
        self.system, self.user = spec.parts()
        self.system_counts = Counter(field for field in self.system.fields if field is not None)
        self.user_counts = Counter(field for field in self.user.fields if field is not None)
        self.counts = self.system_counts + self.user_counts
        self.variables = set(self.counts)
        self.literal_system = "".join(self.system.literals)
        self.literal_user = "".join(self.user.literals)
        self._chat_template: ChatPromptTemplate | None = None

    @property
    def chat_template(self) -> ChatPromptTemplate:
        """The template as LangChain's ``ChatPromptTemplate`` (f-string: the checks above
        leave it only plain fields). Made on first render, after the size check passed."""
        if self._chat_template is None:
            self._chat_template = ChatPromptTemplate.from_messages(
                [("system", self.spec.system), ("human", self.spec.user)],
                template_format="f-string",
            )
        return self._chat_template

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
            system_param="system_prompt_template" if system is not None else LIBRARY_PARAM,
            user_param="user_prompt_template" if user is not None else LIBRARY_PARAM,
        )
        return PromptTemplate(spec)
