"""The settings reference and the default env file, rendered from ``Settings``.

``Settings`` (``llm_service/settings.py``) is the one place where a setting's name, type,
default and meaning are written. ``docs/settings.md`` and ``configs/default.env`` are
generated from it by this module, so they cannot drift from the code, and a test fails when
a checked-in copy differs from what this module renders::

    python -m llm_service.settings_reference > docs/settings.md
    python -m llm_service.settings_reference --env > configs/default.env

It reads only what ``Settings`` already holds (field order, annotations, constraints,
descriptions), and imports nothing from the package but ``llm_service.settings``: it sits at
the bottom of the layers, beside the module it documents.
"""

from __future__ import annotations

import argparse
import enum
import sys
import textwrap
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AliasChoices

from llm_service.settings import ENV_PREFIX, Settings

# The variables of the OPEA LLM microservice this service replaces, in the order its README
# lists them. They come first because a deployment that swaps the services sets only these.
CONTRACT: tuple[str, ...] = (
    "model_name",
    "model_server",
    "model_server_endpoint",
    "usvc_port",
    "disable_streaming",
    "output_guard_exists",
    "tls_skip_verify",
    "vllm_api_key",
    "vllm_client_id",
    "vllm_client_secret",
    "vllm_token_url",
)

# Credentials for the model server. The env file shows them commented out even where they
# belong to the contract: a key or client secret belongs in the environment (a Kubernetes
# Secret), not in a file that is committed and copied into images.
CREDENTIALS: frozenset[str] = frozenset(
    {"vllm_api_key", "vllm_client_id", "vllm_client_secret", "vllm_token_url"}
)

GENERATE_DOCS = "python -m llm_service.settings_reference > docs/settings.md"
GENERATE_ENV = "python -m llm_service.settings_reference --env > configs/default.env"

_MARKDOWN_INTRO = f"""\
# Settings

<!-- Generated from llm_service/settings.py by `{GENERATE_DOCS}`.
     Edit the descriptions there, not here. -->

Every setting is an environment variable: `{ENV_PREFIX}` and the name of a field of
`llm_service.settings.Settings` in capitals (`model_name` is `{ENV_PREFIX}MODEL_NAME`). A value
comes from, first to last: a keyword argument (`Settings(model_name=...)`), the process
environment, the env file given with `llm-service serve --env-file FILE`
(`make serve ENV_FILE=FILE`), the default below. An empty value counts as unset.

[`configs/default.env`](../configs/default.env) lists every setting with its meaning and
default; it is generated from the same source:

```bash
{GENERATE_ENV}
```

[`configs/vllm.env`](../configs/vllm.env) is a set-up for a vLLM server.

Values are checked at start-up, and an invalid one stops it with a line that names the
variable, e.g.
`{ENV_PREFIX}USVC_PORT: Input should be less than or equal to 65535 (got '70000')`.
`llm-service check` runs the same checks (and reaches the model server) without serving.
Secrets are never written to logs, error messages or `repr`.

More on what the settings do: [servers.md](servers.md) (model servers, credentials, TLS,
replicas, timeouts), [routes.md](routes.md) (what a request may ask for),
[prompting.md](prompting.md) (templates, token budget), [operations.md](operations.md)
(metrics, logs, tracing), [faults.md](faults.md) (limits, shutdown, inbound keys).
"""

_ENV_INTRO = f"""\
# Settings of llm-service, one per line, each with its meaning and default.
# Generated from llm_service/settings.py (edit the descriptions there, not here) by
#   {GENERATE_ENV}
#
# `make serve` reads this file (`llm-service serve --env-file configs/default.env`); a
# variable set in the environment wins over it. A line left commented out keeps the default,
# which is empty there. With no {ENV_PREFIX}MODEL_SERVER_ENDPOINT the service starts the embedded
# llama.cpp server; configs/vllm.env is a set-up for a vLLM server.
"""

_CONSTRAINTS: tuple[tuple[str, str], ...] = (
    ("gt", ">"),
    ("ge", "≥"),
    ("lt", "<"),
    ("le", "≤"),
)


def env_name(field: str) -> str:
    """The environment variable of a ``Settings`` field, as pydantic-settings reads it (the
    first of its aliases, for one read from other names: ``HTTP_PROXY``)."""
    alias = (
        Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
    )
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"{ENV_PREFIX}{field.upper()}"


def grouped_fields() -> Iterator[tuple[str, list[str]]]:
    """Yield (group title, field names): the contract first, then the rest in field order.

    A contract name missing from ``Settings`` raises ``KeyError``: dropping one breaks the
    drop-in promise, and the reference should not quietly go along with it.
    """
    fields = Settings.model_fields
    missing = [env_name(name) for name in CONTRACT if name not in fields]
    if missing:
        raise KeyError(f"Settings lost contract variable(s) {', '.join(missing)}")
    yield "The contract of the service this replaces", list(CONTRACT)
    yield "Beyond it", [name for name in fields if name not in CONTRACT]


def _strip_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``: an empty value is shown as the default, not as a type."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_secret(annotation: Any) -> bool:
    # Matched by name: importing pydantic here would add a dependency for one isinstance.
    return getattr(_strip_optional(annotation), "__name__", "") == "SecretStr"


def _choices(values: Sequence[object]) -> str:
    return "one of " + ", ".join(f"`{value}`" for value in values)


def type_text(annotation: Any) -> str:
    """A reader's name for a field's type: what to write, not the Python class."""
    annotation = _strip_optional(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return _choices(get_args(annotation))
    if origin is Annotated:
        base, *extra = get_args(annotation)
        if base is Path and any(getattr(m, "path_type", "") == "file" for m in extra):
            return "path of an existing file"
        return type_text(base)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _choices([member.value for member in annotation])
    if _is_secret(annotation):
        return "secret text"
    names: dict[Any, str] = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "text",
        Path: "path",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def constraint_text(metadata: Sequence[Any]) -> str:
    """Bounds and patterns a value must meet, as ``≥ 1, ≤ 65535``."""
    parts: list[str] = []
    for item in metadata:
        for attr, sign in _CONSTRAINTS:
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{sign} {_value_text(bound)}")
        if getattr(item, "min_length", None) == 1:
            parts.append("not empty")
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            parts.append(f"matching `{pattern}`")
    return ", ".join(parts)


def _value_text(value: object) -> str:
    """A value as it is written in the environment (``10``, not ``10.0``)."""
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default_text(field: str) -> str:
    """The default as written in the environment; empty for secrets and for no default."""
    info = Settings.model_fields[field]
    if _is_secret(info.annotation):
        return ""
    return _value_text(info.default)


def description(field: str) -> str:
    """The field's description, which ``Settings`` must give (the reference is built on it)."""
    text = Settings.model_fields[field].description
    if not text:
        raise ValueError(f"Settings.{field} has no description; add one in settings.py")
    return " ".join(text.split())


def _cell(text: str) -> str:
    # Table cells: a pipe ends the cell, and text in angle brackets is taken for an HTML tag
    # and hidden by GitHub (e.g. "Bearer <key>").
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code_cell(text: str) -> str:
    escaped = text.replace("|", "\\|")
    return f"`{escaped}`" if text else "(empty)"


def settings_markdown() -> str:
    """``docs/settings.md``: one table per group, a row per setting."""
    lines = [_MARKDOWN_INTRO]
    for title, fields in grouped_fields():
        lines += [f"## {title}", "", "| variable | type | default | meaning |", "|---|---|---|---|"]
        for field in fields:
            info = Settings.model_fields[field]
            kind = type_text(info.annotation)
            bounds = constraint_text(info.metadata)
            kind = f"{kind}, {bounds}" if bounds else kind
            row = (
                f"`{env_name(field)}`",
                kind.replace("|", "\\|"),
                _code_cell(default_text(field)),
                _cell(description(field)),
            )
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _written_out(field: str) -> bool:
    """Whether the env file sets a variable rather than showing it commented out.

    Settings that have a value by default are written out, and so is the whole contract, so
    the file reads as a complete configuration of the service it replaces (an empty
    ``LLM_MODEL_SERVER_ENDPOINT=`` says "the embedded server"). Empty optional settings and
    credentials stay commented out: setting them empty would mean the same, and uncommenting
    one should be a deliberate act.
    """
    if field in CREDENTIALS:
        return False
    return field in CONTRACT or Settings.model_fields[field].default is not None


def default_env() -> str:
    """``configs/default.env``: every setting with its description and default."""
    out = [_ENV_INTRO]
    for title, fields in grouped_fields():
        out.append(f"# --- {title} ".ljust(92, "-"))
        for field in fields:
            out.append("")
            out += textwrap.wrap(
                description(field),
                width=92,
                initial_indent="# ",
                subsequent_indent="# ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            line = f"{env_name(field)}={default_text(field)}"
            out.append(line if _written_out(field) else f"# {line}")
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference (Markdown) or, with ``--env``, the default env file."""
    parser = argparse.ArgumentParser(
        prog="python -m llm_service.settings_reference",
        description="Render docs/settings.md (default) or configs/default.env from Settings.",
    )
    parser.add_argument("--env", action="store_true", help="print configs/default.env instead")
    args = parser.parse_args(argv)
    sys.stdout.write(default_env() if args.env else settings_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
