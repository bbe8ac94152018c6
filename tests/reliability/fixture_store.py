"""The committed tiny stores under ``tests/reliability/stores/``: what they hold, and how to write one.

``stores/format-<N>/`` is a store written by nbflow at store format ``N`` (``home/store/...``) with the
secret key it was written with (``secret.key``). The test loads every one of them: a store of the current
format must load exactly :func:`entries`; one of an older format must read as clean misses.

When :data:`nbflow.store.FORMAT_VERSION` changes, keep the old directories and write the new one::

    python -m tests.reliability.fixture_store tests/reliability/stores/format-<N>
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: The entries of every fixture store: key -> (value, serializer, task name, run id, expires).
#: Keys cover a plain name and one that is not a file name (its buffer files are named by a digest);
#: values cover in-band pickles, out-of-band buffers, JSON and an expiry date far in the future.
EXPIRES = 4102444800.0  # 2100-01-01


def entries() -> dict[str, tuple[Any, str, str, str | None, float | None]]:
    return {
        "int": (42, "pickle", "fixture.int", None, None),
        "text": ("héllo wörld ✓", "pickle", "fixture.text", "run-1", None),
        "nested": (
            {"a": [1, 2.5, None, True], "b": (b"\x00\xff", frozenset({3, 4})), "c": {"d": -7}, "e": 10**30},
            "pickle", "fixture.nested", None, None,
        ),
        "array": (np.arange(8192, dtype=np.float64).reshape(64, 128), "pickle", "fixture.array", None, None),
        "key with spaces/and:colons": (
            {"ints": np.arange(8192, dtype=np.int64), "label": "odd key"}, "pickle", "fixture.odd", None, None,
        ),
        "json": ({"x": [1, 2, 3], "y": "z"}, "json", "fixture.json", None, None),
        "expires": ("until 2100", "pickle", "fixture.expires", None, EXPIRES),
    }


def same(left: Any, right: Any) -> bool:
    """Equal with the same types all the way down (arrays: same dtype, shape and contents)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, np.ndarray):
        return left.dtype == right.dtype and left.shape == right.shape and bool(np.array_equal(left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[key], right[key]) for key in left)
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    return bool(left == right)


def write(directory: Path) -> None:
    """Write a fixture store of the current format into ``directory`` (which must not exist)."""
    from nbflow.store import ResultStore

    directory = Path(directory)
    if directory.exists():
        raise SystemExit(f"{directory} exists; fixture stores are never rewritten")
    store = ResultStore(directory / "home", size_limit=1 << 30, secret_file=directory / "secret.key")
    for key, (value, serializer, task_name, run_id, expires) in entries().items():
        store.save(key, value, task_name=task_name, run_id=run_id, serializer=serializer, expires=expires)
    store.close()
    # Only what the format needs: the database (its log checkpointed into it on close) and the buffers.
    for leftover in (directory / "home" / "store").glob("cache.db-*"):
        leftover.unlink()
    shutil.rmtree(directory / "home" / "runs", ignore_errors=True)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
