"""A damaged store never stops a notebook, and `nbflow cache clear` always leaves a working one.

Each case damages a real store that earlier task calls filled, then runs task calls in a fresh process: they
return their values (a miss, then a hit from the fresh store), one warning says what was moved where, and
`nbflow cache clear` / `info` and `nbflow runs` exit 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import ROOT

CALLS = textwrap.dedent("""
    import json, sys, warnings
    import nbflow
    from nbflow.exceptions import NbflowWarning

    @nbflow.task
    def double(x):
        return 2 * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = [double(x, return_state=True) for x in range(int(sys.argv[1]))]
        again = [double(x, return_state=True).name for x in range(3)]
    print(json.dumps({"values": [state.result() for state in first][:3], "first": [s.name for s in first][:3],
                      "again": again,
                      "warnings": [str(w.message) for w in caught if issubclass(w.category, NbflowWarning)]}))
""")


def run(code_or_argv: str | list[str], env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", code_or_argv, *arguments] if isinstance(code_or_argv, str) else code_or_argv
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def calls(env: dict[str, str], count: int = 3) -> dict[str, object]:
    done = run(CALLS, env, str(count))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    output: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return output


def cli(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    done = run([sys.executable, "-m", "nbflow.cli", *arguments], env)
    assert done.returncode == 0, (arguments, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _bad_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for start in range(page, len(data), page):  # every page but the first (the header) is garbage
        data[start : start + page] = os.urandom(min(page, len(data) - start))
    path.write_bytes(bytes(data))


def _checkpointed(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "random bytes": _random_bytes, "truncated": _truncated, "bad pages": _bad_pages,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("database", ["store/cache.db", "runs.sqlite"])
def test_a_damaged_database_is_moved_aside_and_calls_go_on(database: str, damage: str, nbflow_home: Path,
                                                           subprocess_env: dict[str, str]) -> None:
    calls(subprocess_env, count=300)  # enough entries for many pages
    path = nbflow_home / database
    _checkpointed(path)
    DAMAGE[damage](path)
    output = calls(subprocess_env)
    assert output["values"] == [0, 2, 4]
    assert output["again"] == ["Cached"] * 3  # the fresh store serves the calls just made
    moved = [p for p in path.parent.glob(f"{path.name}.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    if database == "store/cache.db":
        assert len(moved) == 1
        (warning,) = [w for w in output["warnings"] if "damaged" in str(w)]  # type: ignore[attr-defined]
        assert str(moved[0]) in str(warning)
    for command in (["cache", "info"], ["cache", "clear"], ["runs"], ["cache", "info"]):
        cli(subprocess_env, *command)
    assert calls(subprocess_env)["first"] == ["Completed"] * 3  # cleared, then computed again


def test_damage_found_by_a_command_is_repaired_by_it(nbflow_home: Path, subprocess_env: dict[str, str]) -> None:
    calls(subprocess_env, count=300)
    path = nbflow_home / "store" / "cache.db"
    _checkpointed(path)
    _random_bytes(path)
    done = cli(subprocess_env, "cache", "clear")
    assert "damaged" in done.stderr
    cli(subprocess_env, "cache", "info")
    assert calls(subprocess_env)["values"] == [0, 2, 4]


def test_blobs_replaced_by_a_file(nbflow_home: Path, subprocess_env: dict[str, str]) -> None:
    calls(subprocess_env)
    blobs = nbflow_home / "store" / "blobs"
    blobs.rmdir()
    blobs.write_text("not a directory")
    output = calls(subprocess_env)
    assert output["values"] == [0, 2, 4]
    assert any("was not a directory" in str(w) for w in output["warnings"])  # type: ignore[attr-defined]
    cli(subprocess_env, "cache", "clear")


@pytest.mark.parametrize("damage", ["short", "a directory"])
def test_a_damaged_or_unreadable_secret_key_runs_uncached_with_one_warning(
    damage: str, nbflow_home: Path, subprocess_env: dict[str, str]
) -> None:
    secret = Path(subprocess_env["NBFLOW_SECRET_FILE"])
    calls(subprocess_env)
    secret.unlink()
    if damage == "short":
        secret.write_bytes(b"short")
        os.utime(secret, (0, 0))  # not a key being written right now
    else:
        secret.mkdir()  # unreadable as a file, even by root
    output = calls(subprocess_env)
    assert output["values"] == [0, 2, 4]
    assert output["first"] == output["again"] == ["Completed"] * 3  # uncached
    assert len(output["warnings"]) == 1, output["warnings"]  # type: ignore[arg-type]
    assert str(secret) in str(output["warnings"][0])  # type: ignore[index]
