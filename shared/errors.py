"""One error hierarchy for the whole fleet, rendered in one place.

Domain code raises these; each app's single exception handler (``install_error_handlers``)
turns them into the envelope of API.md: ``{"error": {message, type, code, param, request_id}}``.
Never match on message strings: branch on the class or ``code``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar


class TunefleetError(Exception):
    """Base of every error a client may see. Subclasses fix status/type/code."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default
        self.headers = headers or {}

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
                "request_id": request_id,
            }
        }


class InvalidRequest(TunefleetError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(TunefleetError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(TunefleetError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(TunefleetError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(TunefleetError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(TunefleetError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Unprocessable(TunefleetError):
    """Well-formed but semantically unacceptable (e.g. adapter rank above the limit)."""

    status = 422
    type = "invalid_request_error"
    code = "unprocessable"


class RateLimited(TunefleetError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, **kw: Any) -> None:
        headers = {"Retry-After": str(max(1, round(retry_after)))}
        super().__init__(message, headers=headers, **kw)


class ServiceUnavailable(TunefleetError):
    """A dependency is down or the service is draining/overloaded."""

    status = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1, **kw: Any) -> None:
        headers = {"Retry-After": str(max(1, round(retry_after)))}
        super().__init__(message, headers=headers, **kw)


class InternalError(TunefleetError):
    """Only for bugs. The handler logs the traceback and never sends it."""


STATUS_TO_ERROR: dict[int, type[TunefleetError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: RateLimited,
    503: ServiceUnavailable,
}


# an absolute path: a "/" not preceded by a name character, a slash or a URL scheme's colon
# (``acme/a@v1`` and ``http://host/x`` stay), up to whitespace, a quote or a bracket
_ABS_PATH = re.compile(r"(?<![\w/.:~-])/[^\s'\"`,;()\[\]{}<>]+")


def without_paths(text: str) -> str:
    """``text`` with absolute filesystem paths replaced by ``<path>``: for messages about
    server-side files (an adapter the engine cannot load) that reach a client."""
    return _ABS_PATH.sub("<path>", text)


def error_from_envelope(status: int, body: Any) -> TunefleetError:
    """Rebuild a typed error from another service's envelope (used by the typed clients)."""
    err = body.get("error", {}) if isinstance(body, dict) else {}
    message = str(err.get("message") or f"upstream answered HTTP {status}")
    cls = STATUS_TO_ERROR.get(status, InternalError if status >= 500 else InvalidRequest)
    kw: dict[str, Any] = {"param": err.get("param"), "code": err.get("code")}
    if cls in (RateLimited,):
        return RateLimited(message, retry_after=1, **kw)
    if cls is ServiceUnavailable:
        return ServiceUnavailable(message, **kw)
    return cls(message, **kw)
