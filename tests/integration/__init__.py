"""Integration tests: real HTTP servers on 127.0.0.1 (the fake model server, the service under
uvicorn, the embedded llama.cpp server)."""
