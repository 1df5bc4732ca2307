"""Settings samseg reads from the environment, checked the same way everywhere."""

from __future__ import annotations

import os


def positive_int_env(name: str, default: int) -> int:
    """int($name) when set and not blank, else `default`; ValueError (one line) when it is
    not a whole number >= 1."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be >= 1")
    return value
