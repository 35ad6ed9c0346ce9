"""Command line: ``llm-service serve`` (also ``python -m llm_service``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from llm_service.settings import Settings, SettingsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-service",
        description="LLM microservice for RAG pipelines. Settings come from LLM_* environment "
        "variables and an optional env file (see configs/).",
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP service (the default command)")
    serve.add_argument("--env-file", help="env file with LLM_* settings, e.g. configs/vllm.env")
    serve.add_argument("--host", help="interface to bind (default: LLM_USVC_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (default: LLM_USVC_PORT)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in (None, "serve"):
        return serve(
            getattr(args, "env_file", None),
            getattr(args, "host", None),
            getattr(args, "port", None),
        )
    return 2  # pragma: no cover - argparse rejects unknown commands


def serve(env_file: str | None, host: str | None, port: int | None) -> int:
    overrides: dict[str, object] = {}
    if host:
        overrides["usvc_host"] = host
    if port:
        overrides["usvc_port"] = port
    try:
        settings = Settings.load(env_file, **overrides)
    except SettingsError as exc:
        print(f"llm-service: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import uvicorn

    from llm_service.app import create_app

    try:
        app = create_app(settings)
    except ValueError as exc:  # e.g. an unusable prompt template
        print(f"llm-service: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.usvc_host,
        port=settings.usvc_port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
