"""Every error as one JSON shape (``errors.ServiceError.body``), whichever layer raised it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_service.errors import ServiceError
from llm_service.protocol.validation import invalid_request

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into error responses."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = invalid_request(exc.errors())
    return JSONResponse(err.body(), status_code=err.status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    err = ServiceError(str(exc.detail), status=exc.status_code, type=kind)
    return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    err = ServiceError("internal error", status=500)
    return JSONResponse(err.body(), status_code=500)
