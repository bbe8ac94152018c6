"""A DataFrame of object strings restored from the cache by a ``%%task`` cell (the second run of a notebook)
comes back with its fingerprint known, so the cells reading it look their keys up without walking its strings.
That fingerprint is exactly what nbflow computes for the restored frame from scratch, and any change made to
the restored frame in place makes a reading cell compute again, from the new values."""

from __future__ import annotations

from typing import Any

import pytest

from nbflow.hashing import _libraries
from nbflow.hashing.values import fingerprint
from tests.ipython.conftest import shell  # noqa: F401 (the fixture)

ROWS = 10_000  # remembered from 4,096 values; stored out-of-band from 64 KiB of text
BUILD = ("%%task\nimport pandas as pd\n"
         f"frame = pd.DataFrame({{f's{{j}}': pd.Series([f'user-{{i}}-{{j}}' for i in range({ROWS})], dtype=object) "
         "for j in range(3)})")
READ = "%%task\ncount = int((frame == 'needle').sum().sum()) + len(frame)"


def _notices(shell: Any) -> list[str]:  # noqa: F811
    notices = [str(output["data"].get("text/plain", "")) for output in shell.display_pub.outputs
               if output.get("metadata", {}).get("nbflow", {}).get("cache_notice")]
    shell.display_pub.outputs.clear()
    return notices


def _run(shell: Any, code: str) -> bool:  # noqa: F811
    """Run a cell; whether it was restored from the cache."""
    shell.display_pub.outputs.clear()
    result = shell.run_cell(code)
    assert result.success, result.error_in_exec or result.error_before_exec
    return any("restored from the cache" in notice for notice in _notices(shell))


def _restart(shell: Any) -> None:  # noqa: F811
    """A new kernel, as far as the frame goes: no variable, nothing remembered of it."""
    shell.user_ns.pop("frame", None)
    shell.user_ns.pop("count", None)
    _libraries._ObjectsMemo.table.clear()


def _restored(shell: Any) -> Any:  # noqa: F811
    _restart(shell)
    assert _run(shell, BUILD)
    return shell.user_ns["frame"]


def _first_run(shell: Any) -> None:  # noqa: F811
    """The notebook's first run: both cells compute (``pd`` bound beforehand, as the restart leaves it)."""
    _run(shell, "import pandas as pd")
    assert not _run(shell, BUILD)
    assert not _run(shell, READ)


def test_the_restored_frame_knows_its_fingerprint(shell: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _first_run(shell)
    computed = fingerprint(shell.user_ns["frame"])
    frame = _restored(shell)
    assert len(_libraries._ObjectsMemo.table) == 3  # the three columns
    with monkeypatch.context() as patch:
        def walked(array: Any, np: Any) -> None:
            raise AssertionError("the restored frame's strings were walked again")

        patch.setattr(_libraries, "_object_strings_encoding", walked)
        seeded = fingerprint(frame)
        assert _run(shell, READ)  # its key, looked up without walking the strings
    _libraries._ObjectsMemo.table.clear()
    assert seeded == fingerprint(frame) == computed
    assert shell.user_ns["count"] == ROWS


CHANGES = [
    ("frame.iloc[0, 0] = 'needle'", 1, ROWS),
    ("frame.loc[ROWS - 1, 's2'] = 'needle'", 1, ROWS),
    ("frame['s0'] = ['needle'] * ROWS", ROWS, ROWS),
    ("frame.loc[ROWS] = ['needle', 'needle', 'x']", 2, ROWS + 1),
    ("frame.loc[:, 's1'] = frame['s1'].to_numpy()[::-1]", 0, ROWS),  # every slot rewritten, none a needle
]


@pytest.mark.parametrize(("change", "needles", "rows"), CHANGES, ids=[c for c, _, _ in CHANGES])
def test_a_restored_frame_changed_in_place_is_read_again(shell: Any, change: str, needles: int,  # noqa: F811
                                                         rows: int) -> None:
    _first_run(shell)
    _restored(shell)
    shell.user_ns["ROWS"] = ROWS
    shell.run_cell(change)
    assert not _run(shell, READ), change  # computed again: never the count of the values before the change
    assert shell.user_ns["count"] == needles + rows
    assert _run(shell, READ)  # and the changed frame, unchanged since, is a hit
    # The reversed column is another order of the same values: checked against a fresh walk, not the count.
    frame = shell.user_ns["frame"]
    remembered = fingerprint(frame)
    _libraries._ObjectsMemo.table.clear()
    assert remembered == fingerprint(frame)
