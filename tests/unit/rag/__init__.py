"""Building the prompt (``llm_service.rag``)."""
