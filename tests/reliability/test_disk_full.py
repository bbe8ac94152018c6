"""A result that cannot be written (disk full, file too large, any OSError) is still returned.

The task's state says it was not persisted, the user sees one warning naming the task, no partial entry
is left behind, and the store works again as soon as there is room.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nbflow
from nbflow.exceptions import NbflowWarning
from tests.reliability.conftest import run_child


@nbflow.task
def produce(kind: str) -> Any:
    if kind == "buffer":
        return np.arange(500_000, dtype=np.int64)  # 4 MB, written to a buffer file
    return bytes(range(256)) * 12_000  # 3 MB, pickled into the stream kept in the database row


def assert_nothing_stored(home: Path) -> None:
    from nbflow.engine.runtime import get_store

    store = get_store()
    assert list(store.records()) == [] and store.volume() == 0
    assert [path for path in (home / "store" / "blobs").rglob("*") if path.is_file()] == []


def assert_one_warning(caught: list[warnings.WarningMessage]) -> str:
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, NbflowWarning)]
    assert len(messages) == 1, messages
    assert "'produce'" in messages[0] and "not persisted" in messages[0]
    return messages[0]


@pytest.mark.parametrize("kind", ["buffer", "stream"])
def test_a_file_size_limit_in_a_real_process(kind: str, child_env: dict[str, str], nbflow_home: Path) -> None:
    """The kernel refuses the write (RLIMIT_FSIZE: EFBIG), in the buffer file or in SQLite's log."""
    code = textwrap.dedent(
        f"""
        import resource, signal, warnings
        import numpy as np
        from nbflow.exceptions import NbflowWarning
        from nbflow.engine.runtime import get_store
        from tests.reliability.test_disk_full import assert_nothing_stored, assert_one_warning, produce
        from pathlib import Path

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        home = Path({str(nbflow_home)!r})
        get_store()  # the store exists before the limit
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = produce({kind!r}, return_state=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        message = assert_one_warning(caught)
        assert state.name == "Completed" and state.persisted is False, state
        assert "not persisted" in state.message, state.message
        value = state.result()
        assert len(value) in (500_000, 3_072_000)
        assert_nothing_stored(home)
        # Room again: the same call computes and stores, and the next one is a hit.
        with warnings.catch_warnings():
            warnings.simplefilter("error", NbflowWarning)
            assert produce({kind!r}, return_state=True).persisted is True
            assert produce({kind!r}, return_state=True).name == "Cached"
        print(message)
        """
    )
    result = run_child(code, child_env)
    # The warning says where and why: the store's directory, and the system's error.
    assert "not persisted" in result.stdout and str(nbflow_home / "store") in result.stdout, result.stdout


@pytest.mark.parametrize("call", ["write", "fsync", "replace", "utime"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_any_os_error_while_writing(
    call: str, code: int, monkeypatch: pytest.MonkeyPatch, nbflow_home: Path
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    from nbflow.engine.runtime import get_store

    get_store()
    monkeypatch.setattr(os, call, failing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = produce("buffer", return_state=True)
    monkeypatch.undo()
    message = assert_one_warning(caught)
    assert os.strerror(code) in message
    assert state.name == "Completed" and state.persisted is False
    np.testing.assert_array_equal(state.result(), np.arange(500_000))
    assert_nothing_stored(nbflow_home)
    assert produce("buffer", return_state=True).persisted is True


# -- a completely full file system -----------------------------------------------------------------------

FULL_DISK_CALLS = textwrap.dedent(
    """
    import json, sys, warnings
    import nbflow
    from nbflow.exceptions import NbflowWarning

    @nbflow.task
    def double(x):
        return 2 * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        states = [double(int(x), return_state=True) for x in sys.argv[1:]]
    print(json.dumps({"values": [s.result() for s in states], "states": [s.name for s in states],
                      "persisted": [s.persisted for s in states],
                      "warnings": [str(w.message) for w in caught if issubclass(w.category, NbflowWarning)]}))
    """
)

FILL = textwrap.dedent(
    """
    import os, sys
    with open(os.path.join(sys.argv[1], "filler"), "wb") as filler:
        try:
            while True:
                filler.write(b"x" * 65536)
                filler.flush()
        except OSError:
            pass
    """
)

# Mounts a small tmpfs in a private mount namespace (gone with the process), fills the store, fills the disk,
# then runs task calls and CLI commands in fresh processes.
FULL_DISK_SCRIPT = textwrap.dedent(
    """
    set -e
    mount -t tmpfs -o size=4m tmpfs "$1"
    export NBFLOW_HOME="$1/home" NBFLOW_SECRET_FILE="$1/secret.key"
    "$PYTHON" -c "$CALLS" 1 2 > /dev/null
    "$PYTHON" -c "$FILL" "$1"
    "$PYTHON" -c "$CALLS" 1 2 99 100 > "$2/calls.json" 2> "$2/calls.err"
    for command in "runs" "cache info" "cache ls"; do
        "$PYTHON" -m nbflow.cli $command > /dev/null 2>> "$2/cli.err" || echo "$command: exit $?" >> "$2/cli.err"
    done
    """
)


def test_task_calls_on_a_full_file_system_return_their_values(tmp_path: Path, child_env: dict[str, str]) -> None:
    mount_point, out = tmp_path / "disk", tmp_path / "out"
    mount_point.mkdir()
    out.mkdir()
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")
    env = {**child_env, "PYTHON": sys.executable, "CALLS": FULL_DISK_CALLS, "FILL": FILL}
    done = subprocess.run([*unshare, "bash", "-c", FULL_DISK_SCRIPT, "bash", str(mount_point), str(out)],
                          capture_output=True, text=True, env=env, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr + (out / "calls.err").read_text() if (out / "calls.err").exists() else ""
    result = json.loads((out / "calls.json").read_text().strip().splitlines()[-1])
    errors = (out / "calls.err").read_text()
    assert "Traceback" not in errors, errors
    assert result["values"] == [2, 4, 198, 200]
    assert result["states"][:2] == ["Cached", "Cached"], result  # hits served from the read-only store
    assert result["states"][2:] == ["Completed", "Completed"] and result["persisted"][2:] == [False, False]
    store_warnings = [w for w in result["warnings"] if "store" in w]
    assert len(store_warnings) == 1 and "cannot be written" in store_warnings[0], result["warnings"]
    assert (out / "cli.err").read_text().count("exit") == 0, (out / "cli.err").read_text()
    assert "Traceback" not in (out / "cli.err").read_text()
