"""Typed errors shared by every Symbi service, and their mapping to the wire.

Tree::

    SymbiError                      base of everything we raise on purpose
    ├── ConfigError                 bad config file or environment variable (exit non-zero)
    ├── InvalidArgumentError        a request or payload failed validation
    ├── NotFoundError               an id that does not exist
    ├── AlreadyExistsError          a create that would duplicate a record
    ├── ConflictError               optimistic concurrency or illegal state transition
    ├── FailedPreconditionError     the system is not in a state to do it (tier unavailable, draining)
    ├── PermissionDeniedError       policy said no (carries the reason)
    ├── UnauthenticatedError        no or bad credentials
    ├── ResourceExhaustedError      rate limit or capacity exceeded
    ├── UnavailableError            a dependency is down or nobody answered
    ├── DeadlineExceededError       an I/O call ran past its timeout
    └── InternalError               a bug or an unexpected failure

Every error has a stable ``code`` string; ``to_detail``/``from_detail`` carry it in
the ``symbi.v1.ErrorDetail`` message over NATS, and ``grpc_status``/``from_rpc_error``
map it to and from gRPC status codes. This module is the one place those mappings live.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import grpc

from symbi_proto.v1 import common_pb2


class SymbiError(Exception):
    """Base class for errors raised on purpose by Symbi code."""

    code: ClassVar[str] = "internal"
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    def to_detail(self) -> common_pb2.ErrorDetail:
        """Serialize to the wire form used in NATS replies."""
        return common_pb2.ErrorDetail(code=self.code, message=self.message, metadata=self.metadata)


class ConfigError(SymbiError):
    code = "config"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgumentError(SymbiError):
    code = "invalid_argument"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(SymbiError):
    code = "not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SymbiError):
    code = "already_exists"
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class ConflictError(SymbiError):
    code = "conflict"
    grpc_code = grpc.StatusCode.ABORTED


class FailedPreconditionError(SymbiError):
    code = "failed_precondition"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDeniedError(SymbiError):
    code = "permission_denied"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(SymbiError):
    code = "unauthenticated"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(SymbiError):
    code = "resource_exhausted"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(SymbiError):
    code = "unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(SymbiError):
    code = "deadline_exceeded"
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(SymbiError):
    code = "internal"
    grpc_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[str, type[SymbiError]] = {
    cls.code: cls
    for cls in (
        ConfigError,
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        ConflictError,
        FailedPreconditionError,
        PermissionDeniedError,
        UnauthenticatedError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        InternalError,
    )
}
_BY_GRPC: dict[grpc.StatusCode, type[SymbiError]] = {
    cls.grpc_code: cls for cls in _BY_CODE.values() if cls is not ConfigError
}


def from_detail(detail: common_pb2.ErrorDetail) -> SymbiError:
    """Rebuild a typed error from its wire form; unknown codes become InternalError."""
    cls = _BY_CODE.get(detail.code, InternalError)
    message = (
        detail.message
        if cls is not InternalError or detail.code == "internal"
        else (f"{detail.code}: {detail.message}")
    )
    return cls(message, metadata=dict(detail.metadata))


# Trailing-metadata key that carries a serialized ErrorDetail on a failed gRPC call.
GRPC_DETAIL_KEY = "symbi-error-bin"


def grpc_trailers(err: SymbiError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata for ``context.abort``: the typed error, so clients rebuild it exactly."""
    return ((GRPC_DETAIL_KEY, err.to_detail().SerializeToString()),)


def from_rpc_error(exc: grpc.RpcError) -> SymbiError:
    """Map a gRPC failure to a typed error, keeping the server's message (and its detail, when sent)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    trailers: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == GRPC_DETAIL_KEY and isinstance(value, bytes):
            detail = common_pb2.ErrorDetail()
            try:
                detail.ParseFromString(value)
            except Exception:  # a garbled trailer: fall back to the status code
                break
            return from_detail(detail)
    cls = _BY_GRPC.get(code, InternalError)
    return cls(f"{details or code.name}", metadata={"grpc_code": code.name})


def from_exception(exc: BaseException) -> SymbiError:
    """Wrap anything into a SymbiError; SymbiErrors pass through unchanged."""
    if isinstance(exc, SymbiError):
        return exc
    if isinstance(exc, TimeoutError):
        return DeadlineExceededError(str(exc) or "operation timed out")
    return InternalError(f"{type(exc).__name__}: {exc}")
