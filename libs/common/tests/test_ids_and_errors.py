"""Ids (UUIDv7) and the error tree's wire mappings."""

from __future__ import annotations

import uuid

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from symbi_common import errors, ids


@given(st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_uuid7_encodes_its_time_and_version(ms: int) -> None:
    value = ids.uuid7(ms)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert ids.uuid7_time_ms(str(value)) == ms


def test_uuid7_sorts_by_time() -> None:
    earlier, later = ids.uuid7(1_000), ids.uuid7(1_001)
    assert str(earlier) < str(later)


def test_new_ids_are_unique() -> None:
    assert len({ids.new_id() for _ in range(2000)}) == 2000


def test_new_ids_are_canonical_uuid7_with_the_current_time() -> None:
    import time

    before = time.time_ns() // 1_000_000
    minted = [ids.new_id() for _ in range(500)]
    after = time.time_ns() // 1_000_000
    for value in minted:
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # canonical lower-case form
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= ids.uuid7_time_ms(value) <= after


def test_parse_id_rejects_garbage() -> None:
    with pytest.raises(errors.InvalidArgumentError, match="agent id 'x' is not a UUID"):
        ids.parse_id("x", what="agent id")
    assert ids.parse_id(str(uuid.UUID(int=5)).upper()) == str(uuid.UUID(int=5))


def test_uuid7_rejects_out_of_range_time() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        ids.uuid7(1 << 48)


@pytest.mark.parametrize("cls", list(errors.SymbiError.__subclasses__()))
def test_error_detail_round_trip(cls: type[errors.SymbiError]) -> None:
    original = cls("something specific", metadata={"key": "value"})
    rebuilt = errors.from_detail(original.to_detail())
    assert type(rebuilt) is cls
    assert rebuilt.message == "something specific"
    assert rebuilt.metadata == {"key": "value"}


def test_unknown_wire_code_becomes_internal_and_keeps_the_code() -> None:
    detail = errors.InternalError("x").to_detail()
    detail.code = "quantum_flux"
    rebuilt = errors.from_detail(detail)
    assert isinstance(rebuilt, errors.InternalError)
    assert "quantum_flux" in rebuilt.message


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (grpc.StatusCode.UNIMPLEMENTED, errors.InternalError),
    ],
)
def test_grpc_status_maps_to_typed_error(code: grpc.StatusCode, expected: type[errors.SymbiError]) -> None:
    mapped = errors.from_rpc_error(FakeRpcError(code, "why"))
    assert type(mapped) is expected
    assert mapped.metadata["grpc_code"] == code.name


def test_from_exception_wraps_timeouts_and_passes_symbi_errors() -> None:
    assert isinstance(errors.from_exception(TimeoutError()), errors.DeadlineExceededError)
    own = errors.NotFoundError("gone")
    assert errors.from_exception(own) is own
    assert "ValueError: bad" in str(errors.from_exception(ValueError("bad")))
