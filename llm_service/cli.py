"""Command line: ``llm-service serve | check | prompt | settings`` (``python -m llm_service``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llm_service.settings import Settings, SettingsError

if TYPE_CHECKING:
    from starlette.middleware import Middleware


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
    check = sub.add_parser(
        "check", help="validate the settings and templates, reach the model server, report"
    )
    check.add_argument("--env-file", help="env file with LLM_* settings")
    prompt = sub.add_parser(
        "prompt", help="print the messages built for a JSON request, without calling a model"
    )
    prompt.add_argument("--env-file", help="env file with LLM_* settings")
    prompt.add_argument(
        "request", nargs="?", default="-", help="JSON file with the request body (- : stdin)"
    )
    settings = sub.add_parser(
        "settings", help="print the settings reference (Markdown), or an env file with --env"
    )
    settings.add_argument("--env", action="store_true", help="print configs/default.env")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    if command == "settings":  # needs no valid configuration
        from llm_service.settings_reference import default_env, settings_markdown

        print(default_env() if args.env else settings_markdown(), end="")
        return 0
    try:
        settings = Settings.load(getattr(args, "env_file", None), **_overrides(args))
    except SettingsError as exc:
        print(f"llm-service: {exc}", file=sys.stderr)
        return 2
    if command == "check":
        return asyncio.run(check(settings))
    if command == "prompt":
        return prompt(settings, args.request)
    return serve(settings)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["usvc_host"] = args.host
    if getattr(args, "port", None):
        overrides["usvc_port"] = args.port
    return overrides


def serve(settings: Settings, middleware: Sequence[Middleware] = ()) -> int:
    """Run the service under uvicorn until SIGTERM or SIGINT. ``middleware``: ASGI
    middleware around every route (``create_app``), for an entry script of a deployer's own
    (docs/usage.md)."""
    from llm_service.observability.logs import configure_logging, stop_logging

    # LLM_LOG_FORMAT, LLM_LOG_LEVEL, uvicorn's lines too; written by a thread of its own.
    writer = configure_logging(settings)
    try:
        return _serve(settings, middleware, lambda: stop_logging(writer))
    finally:
        stop_logging(writer)  # the last lines are written before exiting


def _serve(
    settings: Settings, middleware: Sequence[Middleware], on_exit: Callable[[], None]
) -> int:
    raise_open_files_limit()
    give_back_large_buffers()

    from llm_service.http.app import create_app
    from llm_service.http.server import Server, uvicorn_config

    try:
        app = create_app(settings, middleware=middleware)
    except ValueError as exc:  # e.g. an unusable prompt template
        print(f"llm-service: {exc}", file=sys.stderr)
        return 2
    # on_exit: before uvicorn re-raises the SIGTERM it caught, which ends the process.
    Server(uvicorn_config(app, settings), on_exit).run()
    return 0


def raise_open_files_limit() -> None:
    """Each stream holds two sockets (client and model server): lift the soft limit on
    open files to the hard one, as servers do, so that thousands of streams fit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            logging.getLogger(__name__).warning("could not raise the open-files limit")


def give_back_large_buffers() -> None:
    """Allocate buffers of 128 KiB and more straight from the OS (glibc), so that freeing
    them gives the memory back.

    glibc raises its mmap threshold each time a large block is freed, after which blocks
    of that size come from the heap, where freed memory stays with the process until the
    heap's top is free. A burst of large replies (whole answers read up to
    LLM_MAX_UPSTREAM_RESPONSE_BYTES, cut off or not) then leaves the process hundreds of
    MB larger for as long as anything else sits above them on the heap. A fixed threshold
    stops that adjustment; blocks this large are rare, and one mmap each costs little.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:  # not glibc (musl, macOS): nothing to tune
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 128 * 1024)


async def check(settings: Settings) -> int:
    """Print a readable report; exit 1 when something needed to serve is missing."""
    from llm_service.errors import ServiceError
    from llm_service.rag import PromptError, PromptLibrary
    from llm_service.upstream import build_client

    ok = True

    def line(good: bool, what: str) -> None:
        nonlocal ok
        ok = ok and good
        print(f"[{'ok' if good else 'FAIL'}] {what}")

    print(f"model {settings.model_name!r} on a {settings.model_server.value} server")
    try:
        library = PromptLibrary.load(settings.prompts_dir, settings.prompt_template)
        line(True, f"prompt templates: {', '.join(sorted(library.specs))} "
                   f"(default: {library.default})")  # fmt: skip
    except PromptError as exc:
        line(False, f"prompt templates: {exc}")
    if settings.embedded:
        from llm_service.upstream.embedded import EmbeddedServerError, default_model_path

        line(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python installed")
        try:
            path = settings.embedded_model_path or default_model_path()
            line(path.is_file(), f"embedded model file: {path}")
        except EmbeddedServerError as exc:
            line(False, str(exc))
        print("endpoint: none configured; `serve` starts the embedded llama.cpp server")
    else:
        assert settings.model_server_endpoint is not None
        from llm_service.upstream.redact import safe_url

        shown = safe_url(settings.model_server_endpoint)  # no credentials on the terminal
        client = build_client(settings, settings.model_server_endpoint)
        try:
            models = await client.models()
            served = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
            line(True, f"model server {shown} answers; serves {served}")
            lengths = [m.get("max_model_len") for m in models.get("data", [])]
            window = next((n for n in lengths if isinstance(n, int)), settings.max_model_len)
            print(f"context window: {window or 'unknown (no token budget)'}")
            if settings.model_name not in served:
                print(f"note: {settings.model_name!r} is not among the served models")
        except ServiceError as exc:
            line(False, f"model server {shown}: {exc.message}")
        finally:
            await client.aclose()
    print("ready to serve" if ok else "not ready")
    return 0 if ok else 1


def prompt(settings: Settings, source: str) -> int:
    """Render the prompt of one request (the HTTP body's JSON) to stdout."""
    from pydantic import ValidationError

    from llm_service.protocol.opea import ChatRequest
    from llm_service.rag import PromptError, PromptLibrary, PromptStep

    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as file:
                text = file.read()
        request = ChatRequest.model_validate_json(text)
        step = PromptStep(PromptLibrary.load(settings.prompts_dir, settings.prompt_template))
        inp = request.model_dump(exclude_none=True)
        built = asyncio.run(step.abuild(inp))
    except (OSError, ValidationError, PromptError) as exc:
        print(f"llm-service: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(built.messages, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
