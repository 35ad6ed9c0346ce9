"""The HTTP service: the app, its routes (thin: parse, call serving, respond), middleware,
and the uvicorn push writer."""
