"""Small validation helpers shared by the config sections and the schema parser.

Every message names the offending field (its path in the released JSON where there is one) and
what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def positive_ints(name: str, values: tuple[int, ...]) -> None:
    if not values:
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {list(values)}")
    for i, v in enumerate(values):
        positive(f"{name}[{i}]", v)


def keys(names: str) -> frozenset[str]:
    return frozenset(names.split())


def take(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"missing required field {where}.{key}")
    return d[key]


def check_keys(d: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def expect(d: Mapping[str, Any], key: str, expected: Any, where: str) -> None:
    """A released option this implementation supports only at one value (absent = that value)."""
    if key in d and d[key] != expected:
        raise ValueError(f"{where}.{key} = {d[key]!r} is not supported; only {expected!r} is")
