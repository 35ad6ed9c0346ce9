"""The importable chain: prompt step then model step, one LangChain Runnable.

The HTTP service and a notebook run the same object::

    from llm_service import Settings, build_chain

    chain = build_chain(Settings(model_server_endpoint="http://localhost:8008"))
    chain.invoke({"question": "What is Deep Learning?", "reranked_docs": [...]})
"""

from llm_service.chain.factories import bind_params, build_chain, build_model, build_prompt_step
from llm_service.chain.rag_chain import RagChain
from llm_service.chain.upstream_model import UpstreamChatModel

__all__ = [
    "RagChain",
    "UpstreamChatModel",
    "bind_params",
    "build_chain",
    "build_model",
    "build_prompt_step",
]
