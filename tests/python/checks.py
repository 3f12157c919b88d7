"""Assertions shared by the Python client's test scripts (test_against.py, test_offline.py)."""

from stardust_client import StardustError


class Failure(Exception):
    """A check did not hold; the message says what was expected and what came."""


def expect(condition, what):
    if not condition:
        raise Failure(what)


def equal(actual, expected, what="value"):
    if actual != expected:
        raise Failure(f"{what}: expected {expected!r}, got {actual!r}")


def raises(kind, fn, *args, **kwargs):
    """Runs fn and returns the StardustError of the given kind it must raise."""
    try:
        value = fn(*args, **kwargs)
    except StardustError as e:
        if e.kind != kind:
            raise Failure(f"expected a {kind} error, got {e.kind} ({e.code}): {e.message}")
        return e
    raise Failure(f"expected a {kind} error, got the value {value!r}")
