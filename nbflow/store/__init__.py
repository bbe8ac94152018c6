"""nbflow's result store: task results cached on local disk, authenticated, surviving kernel restarts.

:class:`ResultStore` is the store, :class:`Record` the metadata of one entry, :class:`CacheMiss` the
signal that there is no usable entry, and :mod:`nbflow.store.serializers` holds the serializers.
"""

from __future__ import annotations

from nbflow.store import serializers
from nbflow.store.record import FORMAT_VERSION, Record
from nbflow.store.store import CacheMiss, ResultStore

__all__ = ["FORMAT_VERSION", "CacheMiss", "Record", "ResultStore", "serializers"]
