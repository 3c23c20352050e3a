"""Durations and sizes as people write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from symbi_common.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), (1.5, 1.5), ("30s", 30.0), ("500ms", 0.5), ("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0),
     (" 1h 5s ", 3605.0), ("0s", 0.0)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5", "5x", "s5", "1h-5m", True, None, -1, "1.5.5s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [(10, 10), ("10", 10), ("512MB", 512_000_000), ("64KiB", 65536), ("1.5GiB", 1610612736), ("1kb", 1000),
     ("3 B", 3), (4.0, 4)],
)  # fmt: skip
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "5 parsecs", "-1", -1, True, 1.5, "MB"])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@given(st.integers(0, 10**6), st.integers(0, 59), st.integers(0, 59))
def test_composed_durations(h: int, m: int, s: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s
