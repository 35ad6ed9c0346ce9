"""LLM microservice for RAG pipelines: prompt building and model-server relay as a Runnable.

Public API (typed: the package ships ``py.typed``)::

    from llm_service import Settings, build_chain, build_prompt, create_app

- ``Settings``: the service's configuration (``LLM_*`` variables, an env file, or keyword
  arguments: ``Settings(model_server_endpoint="http://localhost:8008")``).
- ``build_chain(settings, **params)``: the chain as a LangChain ``Runnable`` (prompt step |
  model step). Input ``{"question", "reranked_docs", "history"}`` or ``{"messages"}``;
  output an ``AIMessage`` (streamed: ``AIMessageChunk``s). It composes like any Runnable::

      rag = {"docs": retriever, "question": RunnablePassthrough()} | to_input | build_chain(s)
      rag.invoke("What is deep learning?")
      rag.with_retry(stop_after_attempt=2).with_fallbacks([other_chain])

  and offers ``invoke``, ``ainvoke``, ``batch``, ``abatch``, ``stream``, ``astream`` and
  ``astream_events``; the sync methods also work inside a running loop (Jupyter).
- ``build_prompt(input)``: only the prompt step, without a model server.
- ``create_app(settings)``: the HTTP service (FastAPI): ``/v1/chat/completions`` (OpenAI /
  OPEA), LangServe-style routes under ``LLM_LANGSERVE_PATH`` and the playground.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Settings", "__version__", "build_chain", "build_prompt", "create_app"]

if TYPE_CHECKING:
    from llm_service.chain import build_chain
    from llm_service.http.app import create_app
    from llm_service.rag import build_prompt
    from llm_service.settings import Settings

_LAZY = {
    "Settings": "llm_service.settings",
    "build_chain": "llm_service.chain",
    "build_prompt": "llm_service.rag",
    "create_app": "llm_service.http.app",
}


def __getattr__(name: str) -> Any:
    # Imported on first use, so importing the package stays cheap.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm_service' has no attribute {name!r}")
