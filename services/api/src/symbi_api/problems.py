"""One error body for every failure, mapped from ``symbi_common.errors``.

Every error the API returns, whatever raised it, is::

    {"error": {"code": "not_found", "message": "no agent 01J...", "request_id": "01J...", "details": {...}}}

with the HTTP status from ``STATUS``; ``code`` is the stable code of the typed error
(``symbi_common.errors``) or, for HTTP-level refusals, ``payload_too_large``,
``method_not_allowed`` and ``not_found``. ``details`` carries what the service said
beyond the message (a policy's deny kind and rule, validation problems, a retry
delay). Nothing unexpected leaks: any other exception is logged and answered as
``internal`` with only the request id to find it in the logs (``http_layer``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from symbi_common.errors import SymbiError

STATUS: dict[str, int] = {
    "invalid_argument": 422,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "conflict": 409,
    "failed_precondition": 409,
    "payload_too_large": 413,
    "resource_exhausted": 429,
    "unavailable": 503,
    "deadline_exceeded": 504,
    "config": 500,
    "internal": 500,
}
REQUEST_ID_HEADER = "X-Request-ID"


class ErrorDetail(BaseModel):
    code: str = Field(description="stable error code, e.g. not_found, permission_denied, invalid_argument")
    message: str
    request_id: str = Field(description="also in the X-Request-ID header and the API's logs")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    401: "No API key, or not a valid one",
    403: "The key lacks the scope, or policy denied the call",
    404: "No such resource",
    409: "Conflicts with the resource's state",
    413: "Request body too large",
    422: "Malformed or invalid request",
    429: "Rate limit exceeded (see Retry-After)",
    503: "A service behind the API is unavailable, or policy could not decide",
    504: "A service behind the API did not answer in time",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _DESCRIPTIONS.items()
}


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, request_id=request_id, details=details or {}))
    return JSONResponse(
        body.model_dump(), status_code=status, headers={REQUEST_ID_HEADER: request_id, **(headers or {})}
    )


def from_symbi(exc: SymbiError, request_id: str) -> JSONResponse:
    status = STATUS.get(exc.code, 500)
    headers = {}
    retry_after = exc.metadata.get("retry_after_s")
    if status == 429 and retry_after:
        headers["Retry-After"] = str(max(1, round(float(retry_after) + 0.499)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="symbi"'
    return error_response(status, exc.code, exc.message, request_id, dict(exc.metadata), headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the one error body."""

    async def symbi_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SymbiError)
        request.state.error_code = exc.code
        return from_symbi(exc, request_id_of(request))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {
                "location": ".".join(str(p) for p in e.get("loc", ())),
                "problem": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"location": "", "problem": "invalid request"}
        message = f"{first['location']}: {first['problem']}" if first["location"] else first["problem"]
        request.state.error_code = "invalid_argument"
        return error_response(422, "invalid_argument", message, request_id_of(request), {"problems": problems})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http")
        headers = dict(exc.headers or {})
        request.state.error_code = code
        return error_response(exc.status_code, code, str(exc.detail), request_id_of(request), headers=headers)

    app.add_exception_handler(SymbiError, symbi_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
