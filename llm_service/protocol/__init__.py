"""Wire formats: the JSON and SSE the service accepts and writes, one module per format.

``openai`` (chat-completion messages, chunk SSE, errors), ``opea`` (the seed's request and
GeneratedDoc, plus the RAG form), ``langserve`` (LangServe's routes). Models and encoders
only: nothing here does I/O or knows about settings.
"""
