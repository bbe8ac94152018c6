"""Argument annotations under Prefect's module name: ``from nbflow.utilities.annotations import quote``.
They are :class:`nbflow.allow_failure`, :class:`nbflow.quote` and :class:`nbflow.unmapped`."""

from __future__ import annotations

from nbflow.engine.futures import allow_failure, quote, unmapped

__all__ = ["allow_failure", "quote", "unmapped"]
