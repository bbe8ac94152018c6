"""Small helpers shared by the store tests."""

from __future__ import annotations

from pathlib import Path

from nbflow.store import ResultStore


def blob_files(store: ResultStore) -> list[Path]:
    """The raw out-of-band buffer files of a store, sorted."""
    return sorted(path for path in (store.directory / "blobs").rglob("*") if path.is_file())
