"""The model-server client (``llm_service.upstream``) against real servers."""
