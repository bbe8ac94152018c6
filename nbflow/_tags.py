"""``with nbflow.tags("nightly", "etl"):`` — tags added to every task run started inside the block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from nbflow.context import _tags
from nbflow.exceptions import ConfigurationError

__all__ = ["tags"]


@contextlib.contextmanager
def tags(*names: str) -> Iterator[set[str]]:
    """Add ``names`` to the tags of every task run started inside the block (in this thread, and in the
    calls it submits), on top of the task's own ``tags=`` and those of enclosing blocks; yields the set of
    tags now in force, as Prefect's ``tags`` does. Tags show in the run history and the graph."""
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"nbflow.tags: every tag must be a non-empty string, got {name!r}")
    current = _tags.get()
    token = _tags.set(tuple(dict.fromkeys((*current, *names))))
    try:
        yield set(_tags.get())
    finally:
        _tags.reset(token)
