"""What one request does: the chat route's request (policy: stream or whole, errors) and
one LangServe call, independent of the web framework."""
