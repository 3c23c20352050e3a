"""API-key authentication, per-key rate limits and scopes: the dependency every /v1 route declares.

``Depends(require("agents:read"))`` gives the route the caller's ``ApiKey`` or stops
the request: no key or an invalid one is 401, a key over its rate limit 429 (with
``Retry-After``; the limit is the key's own or ``[api].rate_limit_per_minute``,
counted in Redis so every replica shares it), a key without the scope 403. When Redis
cannot answer the request is refused (503), never let through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from symbi_api.keys import ApiKey, grants
from symbi_api.runtime import Api
from symbi_common.errors import PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError, UnavailableError
from symbi_common.ratelimit import rate_limit

bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer <key>`")
header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key in the X-API-Key header")


async def authenticate(api: Api, request: Request, token: str) -> ApiKey:
    if not token:
        raise UnauthenticatedError("an API key is required (Authorization: Bearer <key>, or X-API-Key)")
    key = await api.keys.authenticate(token)
    request.state.caller = key
    per_minute = key.rate_limit_per_minute or api.settings.api.rate_limit_per_minute
    burst = 0 if key.rate_limit_per_minute else api.settings.api.rate_limit_burst
    result = await api.limiter.acquire([rate_limit(f"api:key:{key.key_id}", per_minute, 60.0, burst)])
    if not result.allowed:
        if result.unavailable:
            raise UnavailableError(f"cannot check the rate limit ({result.detail}); refused")
        raise ResourceExhaustedError(
            f"API key {key.key_id} is over its rate limit of {per_minute} requests per minute",
            metadata={"retry_after_s": f"{result.retry_after_s:g}"},
        )
    return key


def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency admitting only callers whose key holds ``scope``."""

    async def authorized(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008 - FastAPI's idiom
        x_api_key: str | None = Security(header_key),
    ) -> ApiKey:
        api: Api = request.app.state.api
        token = credentials.credentials if credentials is not None else (x_api_key or "")
        key = await authenticate(api, request, token.strip())
        if not grants(key.scopes, scope):
            raise PermissionDeniedError(f"this API key lacks the scope {scope}", metadata={"required_scope": scope})
        return key

    authorized.__name__ = f"require_{scope.replace(':', '_').replace('*', 'any')}"
    return authorized
