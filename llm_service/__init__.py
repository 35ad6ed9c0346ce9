"""LLM microservice for RAG pipelines: prompt building and model-server relay as a Runnable.

Public API::

    from llm_service import Settings, build_chain, build_prompt, create_app
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Settings", "__version__", "build_chain", "build_prompt", "create_app"]

if TYPE_CHECKING:
    from llm_service.app import create_app
    from llm_service.chain import build_chain
    from llm_service.prompting import build_prompt
    from llm_service.settings import Settings

_LAZY = {
    "Settings": "llm_service.settings",
    "build_chain": "llm_service.chain",
    "build_prompt": "llm_service.prompting",
    "create_app": "llm_service.app",
}


def __getattr__(name: str) -> Any:
    # Imported on first use, so importing the package stays cheap.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm_service' has no attribute {name!r}")
