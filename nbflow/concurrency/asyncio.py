"""``from nbflow.concurrency.asyncio import concurrency, rate_limit``: for ``async`` code — waiting for a
slot never blocks the event loop (it waits in a worker thread)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from nbflow.concurrency import _limits

__all__ = ["concurrency", "rate_limit"]


@contextlib.asynccontextmanager
async def concurrency(names: str | Sequence[str], occupy: int = 1, timeout_seconds: float | None = None,
                      max_retries: int | None = None, lease_duration: float = 300, strict: bool = False,
                      holder: Any = None, raise_on_lease_renewal_failure: bool | None = None) -> AsyncIterator[None]:
    """``async with concurrency("db"):`` — see :func:`nbflow.concurrency`."""
    listed = [names] if isinstance(names, str) else list(names)
    ids = await asyncio.to_thread(_limits.acquire, listed, occupy, timeout_seconds, strict)
    try:
        yield
    finally:
        await asyncio.to_thread(_limits.release, ids, listed, occupy)


async def rate_limit(names: str | Sequence[str], occupy: int = 1, timeout_seconds: float | None = None,
                     strict: bool = False) -> None:
    """``await rate_limit("api")`` — see :func:`nbflow.rate_limit`."""
    await asyncio.to_thread(_limits.rate_limit_wait, names, occupy, timeout_seconds, strict)
