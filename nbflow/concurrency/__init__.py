"""Concurrency and rate limits, shared by every process using one ``NBFLOW_HOME`` (Prefect's global
concurrency limits, without a server)::

    nbflow.set_concurrency_limit("database", 2)                     # once, from any process
    nbflow.set_concurrency_limit("api", 10, slot_decay_per_second=5)  # a rate limit: 5 calls a second

    @nbflow.task
    def query(sql):
        with nbflow.concurrency("database", occupy=1, timeout_seconds=60):
            ...                                                     # at most 2 at once, in every kernel

    @nbflow.task
    def fetch(url):
        nbflow.rate_limit("api")                                    # waits for a free slot
        ...

A name without a limit set does not limit (with one warning), as in Prefect; ``strict=True`` makes it an
error. ``nbflow.concurrency`` is this module, and calling it is calling :func:`concurrency`, so both
``nbflow.concurrency("db")`` and ``from nbflow.concurrency.sync import concurrency`` work. How waiting
stays safe in a notebook (dead holders freed, self-waits refused, timeouts) is in
:mod:`nbflow.concurrency._limits`.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

from nbflow.concurrency._limits import ConcurrencyLimit, delete_limit, get_limit, list_limits, set_limit

__all__ = ["ConcurrencyLimit", "concurrency", "delete_limit", "get_limit", "list_limits", "rate_limit",
           "set_concurrency_limit", "set_limit"]

set_concurrency_limit = set_limit  # the name nbflow exports: nbflow.set_concurrency_limit("db", 2)


@contextlib.contextmanager
def concurrency(names: str | Sequence[str], occupy: int = 1, timeout_seconds: float | None = None,
                max_retries: int | None = None, lease_duration: float = 300, strict: bool = False,
                holder: Any = None, raise_on_lease_renewal_failure: bool | None = None) -> Iterator[None]:
    """Hold ``occupy`` slots of each named limit for the block: wait while the limit is full (at most
    ``timeout_seconds``, then :class:`~nbflow.exceptions.ConcurrencyTimeout`, a ``TimeoutError``).

    Counted across every process using this ``NBFLOW_HOME``; set limits with
    :func:`nbflow.set_concurrency_limit`. A name with no limit does not limit: a warning is logged, as in
    Prefect (``strict=True``: :class:`~nbflow.exceptions.ConcurrencySlotAcquisitionError`). Prefect's lease
    options (``max_retries``, ``lease_duration``, ``holder``, ``raise_on_lease_renewal_failure``) are
    accepted and not needed: a slot is held until the block ends, or its process does.
    """
    from nbflow.concurrency import _limits

    listed = [names] if isinstance(names, str) else list(names)
    ids = _limits.acquire(listed, occupy, timeout_seconds, strict)  # (the lease options need nothing here)
    try:
        yield
    finally:
        _limits.release(ids, listed, occupy)


def rate_limit(names: str | Sequence[str], occupy: int = 1, timeout_seconds: float | None = None,
               strict: bool = False) -> None:
    """Wait until ``occupy`` slots of each named rate limit are free, and take them; they come back at the
    limit's ``slot_decay_per_second`` (set it with :func:`nbflow.set_concurrency_limit`). Waits at most
    ``timeout_seconds`` (then :class:`~nbflow.exceptions.ConcurrencyTimeout`)."""
    from nbflow.concurrency import _limits

    _limits.rate_limit_wait(names, occupy, timeout_seconds, strict)


class _CallableModule(types.ModuleType):
    """``nbflow.concurrency`` is a package (for ``nbflow.concurrency.sync``) and a function at once."""

    def __call__(self, names: str | Sequence[str], occupy: int = 1, timeout_seconds: float | None = None,
                 **options: Any) -> Any:
        return concurrency(names, occupy, timeout_seconds, **options)


sys.modules[__name__].__class__ = _CallableModule
