"""The one error tree. Each class declares what the client sees.

::

    ProxyError
    ├── ClientError (4xx, logged quietly)
    │   ├── InvalidRequestError 400 · AuthenticationError 401 · PermissionDeniedError 403
    │   ├── ModelNotFoundError 404 · NotFoundError 404 · MethodNotAllowedError 405
    │   ├── RequestTooLargeError 413 · UnsupportedMediaTypeError 415
    │   └── RateLimitedError 429 ── BudgetExceededError 429 (not retryable)
    └── ServerError (5xx)
        ├── NoDeploymentAvailableError 503 · ServiceUnavailableError 503
        └── UpstreamError 502 ── UpstreamTimeoutError 504 · UpstreamConnectError 502
                                 UpstreamProtocolError 502 · UpstreamStatusError (its status)

Clients branch on the HTTP status: the official OpenAI SDK maps 400/401/403/404/409/422/429/5xx
to its exception classes and retries 408/409/429/5xx unless ``x-should-retry: false``.
``api/errors.py`` is the only place that renders these as responses.
"""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


_encoder = msgspec.json.Encoder()


class ProxyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after

    def to_json(self) -> bytes:
        body = ErrorBody(self.message, self.type, self.param, self.code)
        return _encoder.encode(ErrorEnvelope(body))

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.retry_after is not None:
            out["retry-after"] = str(max(0, round(self.retry_after)))
        if not self.retryable and self.status >= 429:
            out["x-should-retry"] = "false"
        return out


class ClientError(ProxyError):
    status = 400
    type = "invalid_request_error"


class InvalidRequestError(ClientError):
    status = 400


class AuthenticationError(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ClientError):
    status = 403
    type = "permission_error"


class NotFoundError(ClientError):
    status = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class MethodNotAllowedError(ClientError):
    status = 405
    code = "method_not_allowed"


class RequestTooLargeError(ClientError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaTypeError(ClientError):
    status = 415
    code = "unsupported_media_type"


class RateLimitedError(ClientError):
    status = 429
    type = "rate_limit_exceeded"
    retryable = True


class BudgetExceededError(RateLimitedError):
    """The spend budget of the window is used up; retrying before it resets cannot help."""

    type = "budget_exceeded"
    retryable = False


class ServerError(ProxyError):
    status = 500
    type = "server_error"
    retryable = True


class ServiceUnavailableError(ServerError):
    status = 503
    type = "service_unavailable"


class NoDeploymentAvailableError(ServerError):
    """Every deployment of the alias is cooling down: 429 with the shortest cooldown left."""

    status = 429
    type = "rate_limit_exceeded"
    code = "no_deployment_available"


class UpstreamError(ServerError):
    """The upstream failed; ``retryable`` tells the router whether another try may help."""

    status = 502
    type = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_bad_response"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; we pass its status and error through."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, param=param, code=code, retry_after=retry_after, status=status)
        self.type = type
        self.retryable = retryable
