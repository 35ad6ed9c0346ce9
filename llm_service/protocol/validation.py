"""The one way a pydantic validation failure becomes a 422 naming the fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llm_service.errors import InvalidRequest


def invalid_request(errors: Iterable[Mapping[str, Any]], *, where: str = "") -> InvalidRequest:
    """One 422 naming every bad field: ``messages.0.role: Input should be ...``.

    ``errors`` are pydantic's (``ValidationError.errors()``, FastAPI's
    ``RequestValidationError.errors()``); ``where`` prefixes each location (``input``,
    ``inputs.2``) for bodies nested inside another.
    """
    problems: list[str] = []
    first: str | None = None
    for err in _closest(list(errors)):
        loc = ".".join(str(p) for p in err.get("loc", ()) if not _member_tag(p))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            loc = "body"
        elif not loc and ": " in msg:  # model-level checks say "field: reason"
            loc, msg = msg.split(": ", 1)
        loc = ".".join(part for part in (where, loc) if part) or "body"
        first = first or loc
        problems.append(f"{loc}: {msg}")
    return InvalidRequest("; ".join(problems) or "invalid request", param=first)


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes"})


def _member_tag(part: Any) -> bool:
    """True for the names pydantic puts in a location for each member of a union it tried
    (``constrained-str``, ``list[...]``): types, not fields, so the 422 leaves them out."""
    return isinstance(part, str) and ("[" in part or "-" in part or part in _TYPE_NAMES)


def _closest(errors: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The errors without the union members that the input is not even shaped like, when
    another member got further: for content sent as a list of parts with one bad part, the
    bad part, not also "Input should be a valid string"."""
    tagged = [e for e in errors if any(_member_tag(p) for p in e.get("loc", ()))]
    if len(tagged) < 2:
        return errors
    paths = [_path(e) for e in tagged]

    def shallow(err: Mapping[str, Any]) -> bool:
        path = _path(err)
        return any(len(other) > len(path) and other[: len(path)] == path for other in paths)

    return [e for e in errors if not (e in tagged and shallow(e))]


def _path(err: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(p for p in err.get("loc", ()) if not _member_tag(p))
