"""A store on a temporary home with its own secret file, shared by the store tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nbflow.store import ResultStore


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "nbflow" / "secret.key"


@pytest.fixture
def store(tmp_path: Path, secret_file: Path) -> Iterator[ResultStore]:
    """A store on a temporary home with its own secret file (tests/reliability uses it too)."""
    result_store = ResultStore(tmp_path / "home", size_limit=1 << 34, secret_file=secret_file)
    yield result_store
    result_store.close()

