"""Scrubbing text that came from outside before it reaches a client, a log or /v1/ready.

A model server may echo what it was sent (``Incorrect API key provided: Bearer sk-...``),
and a token endpoint's URL may carry credentials. ``Redactor`` replaces the configured
secrets and anything shaped like a credential with ``***`` and caps the text's length;
``safe_url`` shows a URL without its userinfo, query and fragment.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from llm_service.errors import MAX_MESSAGE_CHARS

REDACTED = "***"
MAX_CHARS = MAX_MESSAGE_CHARS
TRUNCATED = "... (truncated)"
MIN_SECRET_CHARS = 4  # shorter "secrets" would turn ordinary words into ***
RECENT_TOKENS = 8  # OAuth tokens remembered: the current one and a few it replaced

# Shapes of credentials, whatever their value. A group named "keep" is kept as is (the
# scheme, the parameter name and its separator), the rest of the match is replaced.
_SHAPES = (
    # Authorization schemes: "Bearer <token>", "Basic <base64>", "Token <token>"
    r"(?P<keep>\b(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{4,}",
    # api_key=..., "client_secret": "...", access_token: ..., password=... (also in a query);
    # the name must end with the word, so that max_tokens=100 stays readable
    r"(?P<keep2>\b[\w.-]*?(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|credentials?|"
    r"signature|authorization)\"?\s*[=:]\s*\"?)(?:(?:bearer|basic|token)\s+)?"
    r"[^\s\"'&,;}<>]+",
    # "API key sk-..." and other keys with a known prefix: OpenAI, Hugging Face, GitHub
    r"\b(?:sk|rk|pk)-[A-Za-z0-9_-]{8,}",
    r"\bhf_[A-Za-z0-9]{8,}",
    r"\bgh[pousr]_[A-Za-z0-9]{8,}",
    # JSON Web Tokens (most OAuth access tokens)
    r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    # userinfo in a URL: scheme://user:password@host
    r"(?P<keep3>\b[a-z][a-z0-9+.-]*://)[^/\s@]+(?=@)",
)
# The longest text a shape may leave partly visible when a long text is cut in its middle.
_SHAPE_TAIL = 64


class Redactor:
    """Replaces secrets and credential-shaped text with ``***`` and caps text at
    ``MAX_CHARS`` characters. ``add`` registers a secret later (an OAuth access token)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._static: list[str] = []
        self._tokens: deque[str] = deque(maxlen=RECENT_TOKENS)
        for secret in secrets:
            self._remember(self._static, secret)
        self._compile()

    def add(self, secret: str, *, token: bool = False) -> None:
        """Scrub ``secret`` from now on; ``token``: one of a series of short-lived secrets,
        of which only the last few are kept."""
        if token:
            if len(secret) >= MIN_SECRET_CHARS and secret not in self._tokens:
                self._tokens.append(secret)
                self._compile()
        elif self._remember(self._static, secret):
            self._compile()

    def __call__(self, text: str) -> str:
        """``text`` without secrets, at most ``MAX_CHARS`` characters (and the marker)."""
        # Only the start is scrubbed: a 100 MB message costs as much as a short one. The
        # window reaches past the cap so that a secret straddling it is scrubbed whole, and
        # whatever a cut at the window's end may have left of a secret is dropped.
        window = MAX_CHARS + self._tail + 256
        cut = len(text) > window
        if cut:
            text = text[:window]
        text = self._pattern.sub(_replace, text)
        if cut:
            text = text[: len(text) - self._tail]
        if cut or len(text) > MAX_CHARS:
            return text[:MAX_CHARS] + TRUNCATED
        return text

    def __repr__(self) -> str:
        return f"Redactor({len(self._static)} secrets, {len(self._tokens)} tokens)"

    @staticmethod
    def _remember(into: list[str], secret: str) -> bool:
        if len(secret) < MIN_SECRET_CHARS or secret in into:
            return False
        into.append(secret)
        return True

    def _compile(self) -> None:
        secrets = sorted({*self._static, *self._tokens}, key=len, reverse=True)
        alternatives = [re.escape(s) for s in secrets] + list(_SHAPES)
        self._pattern = re.compile("|".join(alternatives), re.IGNORECASE)
        self._tail = max([_SHAPE_TAIL, *(len(s) for s in secrets)])


def _replace(match: re.Match[str]) -> str:
    keep = match.group("keep") or match.group("keep2") or match.group("keep3") or ""
    return keep + REDACTED


def secrets_of_url(url: str | None) -> list[str]:
    """The credentials a URL carries: its userinfo's password (and the Basic header made of
    it) and its query values."""
    if not url:
        return []
    found: list[str] = []
    for part in url.split(","):
        parts = urlsplit(part.strip())
        if parts.password:
            user, password = unquote(parts.username or ""), unquote(parts.password)
            found += [password, base64.b64encode(f"{user}:{password}".encode()).decode()]
        for pair in parts.query.split("&"):
            value = pair.partition("=")[2]
            if len(value) >= 8:  # short values are flags, not secrets
                found.append(unquote(value))
    return found


def safe_url(url: str) -> str:
    """``url`` (or each of a comma-separated list) without userinfo, query or fragment."""
    shown = []
    for part in url.split(","):
        try:
            parts = urlsplit(part.strip())
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
        except ValueError:  # an invalid port: show nothing of it rather than fail
            shown.append("(invalid URL)")
            continue
        if ":" in host:
            host = f"[{host}]"
        shown.append(f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else host)
    return ",".join(shown)
