"""``from nbflow.concurrency.sync import concurrency, rate_limit``: the names of Prefect's
``prefect.concurrency.sync`` (the same functions as ``nbflow.concurrency`` and ``nbflow.rate_limit``)."""

from __future__ import annotations

from nbflow.concurrency import concurrency, rate_limit

__all__ = ["concurrency", "rate_limit"]
