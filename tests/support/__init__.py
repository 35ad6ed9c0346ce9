"""Helpers shared by the tests: real servers, the fake model server, SSE parsing, requests.

Test modules import from here and from ``tests.conftest``'s fixtures, never from each other.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root (where ``pyproject.toml`` is)."""
