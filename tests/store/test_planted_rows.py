"""Rows nbflow did not write never run code: not on a hit, not at process exit, not in any `nbflow cache` command.

The attacker here can write the store directory but not read the secret key. diskcache's own Disk would
unpickle a row whose mode says pickle, a key stored pickled (raw = 0) and the file a row names; the store's
SafeDisk reads none of them. Each planted row carries a pickle that, if loaded, creates a marker file
named after the row kind and the command: the test counts markers, and expects none.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from nbflow.store import FORMAT_VERSION, ResultStore


class Marker:
    """Unpickling it creates the file ``path`` (through builtins.open: no shell needed)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.path), "a"))


def evil(marker: Path) -> bytes:
    return pickle.dumps(Marker(marker), protocol=2)


def M(key: str) -> str:
    return f"{FORMAT_VERSION}:{key}:m"


def P(key: str) -> str:
    return f"{FORMAT_VERSION}:{key}:p"


_DISKCACHE_FILE = "ab/cd/0123456789abcdef0123456789ab.val"
_MODE_RAW, _MODE_PICKLE = 1, 4


def _upsert(db: sqlite3.Connection, key: object, raw: int, mode: int, value: object, filename: str | None) -> None:
    db.execute("DELETE FROM Cache WHERE key = ? AND raw = ?", (key, raw))
    db.execute(
        "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename,"
        " value) VALUES (?, ?, 0, NULL, 0, 0, NULL, 0, ?, ?, ?)",
        (key, raw, mode, filename, value),
    )


def _pickle_file(store_dir: Path, marker: Path) -> str:
    path = store_dir / _DISKCACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(evil(marker))
    return _DISKCACHE_FILE


# Each kind plants its rows into the store of entry "k" (saved honestly first): (database, store dir, marker).
PLANTS: dict[str, Callable[[sqlite3.Connection, Path, Path], None]] = {
    # the record row a hit's touch and every listing read, as diskcache's pickle mode
    "record-pickled-inline": lambda db, d, m: _upsert(db, M("k"), 1, _MODE_PICKLE, evil(m), None),
    # the payload row a hit reads
    "payload-pickled-inline": lambda db, d, m: _upsert(db, P("k"), 1, _MODE_PICKLE, evil(m), None),
    # a key stored pickled: diskcache's iterkeys() unpickles it
    "pickled-key": lambda db, d, m: _upsert(db, evil(m), 0, _MODE_RAW, "x", None),
    # rows whose value is a pickle file of diskcache's
    "record-pickle-file": lambda db, d, m: _upsert(db, M("k"), 1, _MODE_PICKLE, None, _pickle_file(d, m)),
    "payload-pickle-file": lambda db, d, m: _upsert(db, P("k"), 1, _MODE_PICKLE, None, _pickle_file(d, m)),
}

# What a process may do with the store: a hit (then exit, which writes hit counts back), listing, and
# every `nbflow cache` command.
HIT_THEN_EXIT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from nbflow.store import CacheMiss, ResultStore
    store = ResultStore(Path(sys.argv[1]), size_limit=1 << 30, secret_file=Path(os.environ["NBFLOW_SECRET_FILE"]))
    try:
        print(store.load("k"))
    except CacheMiss:
        print("miss")
    store.probe("k")
    list(store.records())
    store.volume()
""")
COMMANDS = ["hit-then-exit", "info", "ls", "prune", "clear"]


def _fresh_store(home: Path) -> None:
    store = ResultStore(home, size_limit=1 << 30, secret_file=Path(os.environ["NBFLOW_SECRET_FILE"]))
    store.save("k", "innocent", task_name="demo.target")
    store.save("other", "also innocent", task_name="demo.other")
    store.close()


def _run(command: str, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if command == "hit-then-exit":
        argv = [sys.executable, "-c", HIT_THEN_EXIT, str(home)]
    else:
        argv = [sys.executable, "-m", "nbflow.cli", "cache", command, "--home", str(home)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("kind", sorted(PLANTS))
def test_a_planted_row_never_runs_code(kind: str, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    # The exploit works when unpickled: the zero below counts something real.
    pickle.loads(evil(markers / "check"))
    assert (markers / "check").exists()
    (markers / "check").unlink()

    for command in COMMANDS:
        home = tmp_path / f"home-{command}"
        _fresh_store(home)
        with sqlite3.connect(home / "store" / "cache.db") as db:
            PLANTS[kind](db, home / "store", markers / f"{kind}-{command}")
        done = _run(command, home, subprocess_env)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        if command != "clear":  # the honest entry next to the planted one is still served
            again = _run("hit-then-exit", home, subprocess_env) if command != "hit-then-exit" else done
            assert "Traceback" not in again.stderr, again.stderr
    assert sorted(path.name for path in markers.iterdir()) == []  # 0 of len(COMMANDS) ran code


def test_values_nbflow_would_have_to_pickle_are_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "home", size_limit=1 << 30, secret_file=tmp_path / "secret.key")
    with pytest.raises(TypeError, match="strings and bytes"):
        store._cache.set("anything", {"a": 1})
    with pytest.raises(TypeError, match="keys are strings"):
        store._cache.set(("a", 1), "x")
    store.close()
