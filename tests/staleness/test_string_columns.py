"""String columns read by ``%%task`` cells: their fingerprints are remembered while unchanged (arrow arrays are
immutable; an object array is proven unchanged slot by slot), and every way of changing one in place between
two runs of a cell makes the cell compute again, from the new values."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ipython.conftest import shell  # noqa: F401 (the fixture)

ROWS = 10_000  # above the size from which string columns are remembered
CELL = "%%task\ncount = int((frame['s'] == 'needle').sum()) + int((words == 'needle').sum())"


def _states(shell: Any) -> list[str]:  # noqa: F811
    notices = [str(output["data"].get("text/plain", "")) for output in shell.display_pub.outputs
               if output.get("metadata", {}).get("nbflow", {}).get("cache_notice")]
    shell.display_pub.outputs.clear()
    return notices


def _run(shell: Any, code: str) -> None:  # noqa: F811
    result = shell.run_cell(code)
    assert result.success, result.error_in_exec or result.error_before_exec


@pytest.mark.parametrize("dtype", ["str", "string[pyarrow]", "string[python]", "object"])
def test_string_columns_changed_in_place_are_read_again(shell: Any, dtype: str) -> None:  # noqa: F811
    _run(shell, f"import numpy as np, pandas as pd\n"
                f"frame = pd.DataFrame({{'s': pd.Series([f'w{{i}}' for i in range({ROWS})], dtype={dtype!r})}})\n"
                f"words = np.array([f'v{{i}}' for i in range({ROWS})], dtype=object)")
    steps = [
        ("", 0),
        ("frame.loc[17, 's'] = 'needle'", 1),
        ("frame.iloc[-1, 0] = 'needle'", 2),
        ("view = words[100:200]\nview[5] = 'needle'", 3),  # an object array written through a view
        ("words[105] = ''.join(['v', '105'])", 2),  # back to an equal string (another object)
        ("frame['s'] = frame['s'].str.replace('needle', 'w0')", 0),
        ("frame.loc[3, 's'] = 'needle'\nframe.loc[3, 's'] = 'w3'", 0),  # changed and changed back
    ]
    for change, expected in steps:
        if change:
            _run(shell, change)
        _states(shell)
        _run(shell, CELL)
        assert shell.user_ns["count"] == expected, (change, _states(shell))
        _run(shell, CELL)  # unchanged: a hit, the same count
        assert shell.user_ns["count"] == expected
        assert any("restored from the cache" in notice for notice in _states(shell)), change


def test_a_memory_mapped_string_column_changed_on_disk_gets_a_new_fingerprint(tmp_path: Any) -> None:
    """Arrow arrays look immutable, but one over a memory-mapped file changes when the file does: its
    fingerprint is never remembered."""
    import pyarrow as pa
    import pyarrow.feather as feather

    from nbflow.hashing.values import fingerprint

    path = tmp_path / "table.arrow"
    feather.write_feather(pa.table({"s": pa.array([f"value{i:06d}" for i in range(ROWS)])}), str(path),
                          compression="uncompressed")
    column = feather.read_table(str(path), memory_map=True)["s"]
    before = fingerprint(column)
    data = path.read_bytes()
    with open(path, "r+b") as file:
        file.seek(data.find(b"value000000"))
        file.write(b"XXXXXX")
    assert column[0].as_py().startswith("XXXXXX")
    assert fingerprint(column) != before
