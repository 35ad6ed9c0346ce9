"""The service's routes (``llm_service.http``) under uvicorn."""
