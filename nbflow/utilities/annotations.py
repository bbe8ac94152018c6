"""Argument annotations under Prefect's module name: ``from nbflow.utilities.annotations import quote``.
They are :class:`nbflow.allow_failure`, :class:`nbflow.quote`, :class:`nbflow.unmapped` and ``opaque``
(a future's result, passed without searching it for further futures)."""

from __future__ import annotations

from nbflow.engine.futures import allow_failure, opaque, quote, unmapped

__all__ = ["allow_failure", "opaque", "quote", "unmapped"]
