"""The one place that renders errors as OpenAI-shaped JSON responses.

Our own ``ProxyError``s carry their status and type. Sanic's protocol-level errors (unknown
route, wrong method, body over the limit, request timeout, malformed HTTP) are mapped onto
the same shape. Anything else is our bug: a generic 500 for the client, the traceback in
the log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sanic import HTTPResponse, Request
from sanic.exceptions import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestCancelled,
    RequestTimeout,
    SanicException,
    ServiceUnavailable,
)
from sanic.handlers import ErrorHandler

from proxy import errors
from proxy.api.response import Response

log = logging.getLogger("llm_proxy")


def error_response(exc: errors.ProxyError, request_id: str | None = None) -> HTTPResponse:
    headers = exc.headers()
    if request_id:
        headers["x-request-id"] = request_id
    return Response(
        exc.to_json(), status=exc.status, headers=headers, content_type="application/json"
    )


def from_sanic(exc: SanicException) -> errors.ProxyError:
    message = str(exc) or "Request failed."
    if isinstance(exc, NotFound):
        return errors.NotFoundError(f"Unknown route: {message}")
    if isinstance(exc, MethodNotAllowed):
        return errors.MethodNotAllowedError(message)
    if isinstance(exc, PayloadTooLarge):
        return errors.RequestTooLargeError(
            "The request body is larger than this proxy accepts (server.max_request_bytes)."
        )
    if isinstance(exc, RequestTimeout):
        return errors.InvalidRequestError(
            "The request was not received in time.", code="request_timeout", status=408
        )
    if isinstance(exc, ServiceUnavailable):
        return errors.ServiceUnavailableError(message)
    if isinstance(exc, BadRequest) or 400 <= exc.status_code < 500:
        return errors.InvalidRequestError(message, status=exc.status_code)
    return errors.ServerError("The proxy failed to handle the request.")


class OpenAIErrorHandler(ErrorHandler):
    """Sanic's error hook: everything that escapes a handler ends here."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        if isinstance(exception, RequestCancelled | asyncio.CancelledError):
            # The client went away; nobody reads this answer and it is not our bug.
            return Response(status=499)
        if isinstance(exception, errors.ProxyError):
            mapped = exception
        elif isinstance(exception, SanicException):
            mapped = from_sanic(exception)
        else:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            mapped = errors.ServerError("The proxy failed to handle the request.")
        return error_response(mapped, request_id_of(request))


def request_id_of(request: Request) -> str | None:
    ctx: Any = request.ctx
    rid: str | None = getattr(ctx, "request_id", None)
    return rid
