"""Building the prompt: templates, documents, history and the token budget.

Pure: no I/O and no settings. The model server's context window and tokenizer come in
through the ``Budget`` protocol, which ``llm_service.upstream.budget`` implements.
"""

from llm_service.rag.prompt import BuiltPrompt, PromptStep, build_prompt
from llm_service.rag.templates import PromptError, PromptLibrary

__all__ = ["BuiltPrompt", "PromptError", "PromptLibrary", "PromptStep", "build_prompt"]
