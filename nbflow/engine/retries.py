"""Retry delay schedules and jitter."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeAlias

from nbflow.exceptions import ConfigurationError
from nbflow.settings import MAX_SECONDS

__all__ = ["RetryDelay", "check_delay", "delay_for", "exponential_backoff", "jittered"]

RetryDelay: TypeAlias = "float | int | Sequence[float | int] | Callable[[int], float]"


def exponential_backoff(backoff_factor: float) -> Callable[[int], float]:
    """A delay schedule for ``retry_delay_seconds``: ``backoff_factor * 2 ** (n - 1)`` seconds before
    retry ``n`` (1, 2, 4, 8, ... times the factor)."""
    if not isinstance(backoff_factor, (int, float)) or isinstance(backoff_factor, bool) or backoff_factor < 0:
        raise ConfigurationError(
            f"exponential_backoff({backoff_factor!r}): the factor must be a number of seconds >= 0"
        )

    def schedule(retry_number: int) -> float:
        return float(backoff_factor) * 2 ** (retry_number - 1)

    schedule.__qualname__ = f"exponential_backoff({backoff_factor!r})"
    return schedule


def check_delay(value: object, owner: str) -> None:
    """Fail early, at decoration time, on a delay that could never work."""
    if callable(value):
        return
    if isinstance(value, bool):
        value = None  # fall through to the error below
    if isinstance(value, (int, float)):
        if not 0 <= value <= MAX_SECONDS:  # nan fails this too
            raise ConfigurationError(
                f"{owner}: retry_delay_seconds={value!r} must be a number from 0 to {MAX_SECONDS:g} (seconds)"
            )
        return
    if isinstance(value, (list, tuple)) and value:
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 <= item <= MAX_SECONDS:
                raise ConfigurationError(
                    f"{owner}: retry_delay_seconds list holds {item!r}; every delay must be a number from 0 "
                    f"to {MAX_SECONDS:g} (seconds)"
                )
        return
    raise ConfigurationError(
        f"{owner}: retry_delay_seconds={value!r} must be a number, a non-empty list of numbers "
        "(the last one repeats), or a callable taking the retry number"
    )


def delay_for(schedule: RetryDelay, retry_number: int) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
    value: object
    if callable(schedule):
        value = schedule(retry_number)
    elif isinstance(schedule, (list, tuple)):
        value = schedule[min(retry_number, len(schedule)) - 1]
    else:
        value = schedule
    delay = float(value)  # type: ignore[arg-type]
    if delay < 0:
        raise ConfigurationError(f"retry delay schedule gave {value!r} for retry {retry_number}; must be >= 0")
    return delay


def jittered(delay: float, factor: float | None, rng: random.Random | None = None) -> float:
    """``delay`` moved by a uniformly random amount of up to ``factor * delay`` either way (never < 0)."""
    if not factor or delay <= 0:
        return delay
    draw = (rng or random).uniform(-factor, factor)
    return max(0.0, delay * (1.0 + draw))
