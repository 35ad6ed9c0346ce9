"""The importable chain (``llm_service.chain``) against real model servers."""
