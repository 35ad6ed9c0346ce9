"""Request bodies shared by the chat tests against the fake and the real model server."""

from __future__ import annotations

from typing import Any

SEED_SYSTEM = (
    "### You are a helpful, respectful, and honest assistant to help the user with questions. "
    "Please refer to the search results obtained from the local knowledge base. ### Search "
    "results:  \n\n"
)


def seed_request(stream: bool, **extra: Any) -> dict[str, Any]:
    """The seed README's curl body."""
    return {
        "messages": [
            {"role": "system", "content": SEED_SYSTEM},
            {"role": "user", "content": "### Question: What is Deep Learning? \n\n"},
        ],
        "max_new_tokens": 32,
        "top_p": 0.95,
        "temperature": 0.01,
        "stream": stream,
        **extra,
    }


DOCS = [
    {"text": "Deep learning uses neural networks.",
     "metadata": {"url": "https://example.com/dl", "citation_id": 1, "vector_distance": 0.23,
                  "reranker_score": 0.83, "Header1": "AI", "Header2": "DL"}},
    {"text": "Stored file text.",
     "metadata": {"bucket_name": "docs", "object_name": "a.pdf", "citation_id": 2,
                  "reranker_score": 0.5}},
]  # fmt: skip
