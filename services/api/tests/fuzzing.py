"""Schemathesis against a live API's OpenAPI schema: every operation, valid and invalid inputs, bounded.

``fuzz`` generates ``examples`` valid and ``negative`` invalid requests per operation
(deterministic, no example database), sends them to ``base_url`` and collects every
check that fails: no 5xx, only documented status codes and content types, JSON
bodies matching their schema, and invalid input refused with a 4xx. Runs in a
thread (Schemathesis calls with ``requests``) while the API answers in the loop.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

POSITIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NEGATIVE_CHECKS = [not_a_server_error, negative_data_rejection]


def fuzz(
    schema_doc: dict[str, Any],
    base_url: str,
    headers: dict[str, str],
    *,
    examples: int = 10,
    negative: int = 5,
    skip: frozenset[str] = frozenset(),
) -> tuple[list[str], int]:
    """The failures found (one line each) and the number of requests sent."""
    schema = schemathesis.openapi.from_dict(schema_doc)
    failures: list[str] = []
    sent = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                failures.append(f"schema: {result.err()}")
                continue
            operation = result.ok()
            if operation.label in skip:
                continue
            for mode, count, checks in (
                (GenerationMode.POSITIVE, examples, POSITIVE_CHECKS),
                (GenerationMode.NEGATIVE, negative, NEGATIVE_CHECKS),
            ):
                if not count:
                    continue

                check = _runner(operation, mode, count, checks, base_url, session, headers)
                try:
                    sent += check()
                except hypothesis.errors.Unsatisfiable:
                    continue
                except (Exception, BaseExceptionGroup) as exc:
                    first = [line for line in str(exc).strip().splitlines() if line.strip()][:8]
                    failures.append(f"{operation.label} ({mode.value}): " + " | ".join(first))
    return failures, sent


def _runner(
    operation: Any,
    mode: GenerationMode,
    count: int,
    checks: list[Any],
    base_url: str,
    session: requests.Session,
    headers: dict[str, str],
) -> Any:
    """A function that runs ``count`` cases of ``operation`` and returns how many it sent."""
    sent = 0

    @hypothesis.settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case[Any]) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(base_url=base_url, session=session, headers=headers, checks=checks, timeout=30)

    def run() -> int:
        check()
        return sent

    return run
