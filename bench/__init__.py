"""Token-relay benchmark of the service: ``uv run --no-sync python -m bench.run``.

See ``docs/performance.md`` for the method and the latest figures.
"""
