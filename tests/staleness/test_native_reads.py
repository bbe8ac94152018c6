"""Files read by pyarrow's native readers (``pandas.read_parquet``, ``pyarrow.parquet``, ``pyarrow.dataset``,
``pyarrow.csv``, ``pyarrow.ipc``, ``pyarrow.memory_map``) count as the call's reads, as ``open()``'s do:
pyarrow opens them in C++, where no Python ``open`` wrapper sees them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.staleness.helpers import lines, run_script

# pyarrow.parquet is not imported before the first call: pandas imports it inside read_parquet, inside
# the task. `from ... import read_table` names taken before nbflow wraps the reader are seen too.
READERS = """
import pandas as pd
import pyarrow.csv
import nbflow
from pyarrow.feather import read_table as read_feather_table

@nbflow.task
def with_pandas(path):
    return int(pd.read_parquet(path)["a"].sum())

@nbflow.task
def with_dataset(path):
    import pyarrow.dataset as ds
    return int(ds.dataset(path, format="parquet").to_table()["a"].to_pandas().sum())

@nbflow.task
def with_parquet_file(path):
    import pyarrow.parquet as pq
    return int(pq.ParquetFile(path).read()["a"].to_pandas().sum())

@nbflow.task
def with_arrow_csv(path):
    return int(pyarrow.csv.read_csv(path)["a"].to_pandas().sum())

@nbflow.task
def with_feather(path):
    return int(read_feather_table(path)["a"].to_pandas().sum())

for task, path in ((with_pandas, "table.parquet"), (with_dataset, "parts"), (with_parquet_file, "table.parquet"),
                   (with_arrow_csv, "table.csv"), (with_feather, "table.feather")):
    state = task(path, return_state=True)
    print(task.name, state.name, state.result())
"""


def _write(directory: Path, total: int) -> None:
    import pandas as pd

    frame = pd.DataFrame({"a": [total, 0]})
    frame.to_parquet(directory / "table.parquet")
    frame.to_csv(directory / "table.csv", index=False)
    frame.to_feather(directory / "table.feather")
    (directory / "parts").mkdir(exist_ok=True)
    frame.to_parquet(directory / "parts" / "part-0.parquet")
    later = time.time_ns() + 5_000_000_000 * total  # a rewrite within one mtime tick must be seen either way
    for name in ("table.parquet", "table.csv", "table.feather", "parts/part-0.parquet"):
        os.utime(directory / name, ns=(later, later))


def test_a_file_read_by_pyarrow_that_changed_is_a_miss(tmp_path: Path) -> None:
    _write(tmp_path, 1)
    names = ["with_pandas", "with_dataset", "with_parquet_file", "with_arrow_csv", "with_feather"]
    assert lines(run_script(tmp_path, READERS)) == [f"{name} Completed 1" for name in names]
    assert lines(run_script(tmp_path, READERS)) == [f"{name} Cached 1" for name in names]
    _write(tmp_path, 2)
    assert lines(run_script(tmp_path, READERS)) == [f"{name} Completed 2" for name in names]


def test_a_new_file_in_a_dataset_directory_is_a_miss(tmp_path: Path) -> None:
    import pandas as pd

    source = """
    import pandas as pd
    import nbflow

    @nbflow.task
    def total(path):
        return int(pd.read_parquet(path)["a"].sum())

    print(total("parts", return_state=True).name, total("parts"))
    """
    (tmp_path / "parts").mkdir()
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "parts" / "p0.parquet")
    assert lines(run_script(tmp_path, source)) == ["Completed 1"]
    assert lines(run_script(tmp_path, source)) == ["Cached 1"]
    pd.DataFrame({"a": [2]}).to_parquet(tmp_path / "parts" / "p1.parquet")
    assert lines(run_script(tmp_path, source)) == ["Completed 3"]


def test_a_remote_location_read_by_pyarrow_is_named_in_a_warning(tmp_path: Path) -> None:
    # The read itself fails (no network here); the warning comes first, from the reader's wrapper.
    source = """
    import pyarrow.parquet as pq
    import nbflow

    @nbflow.task
    def remote():
        try:
            pq.read_table("s3://bucket/data.parquet")
        except Exception:
            pass
        return 1

    remote()
    """
    output = run_script(tmp_path, source)
    assert "NbflowWarning: a cached call reads 's3://bucket/data.parquet', which nbflow cannot watch" in output, output


def test_a_file_uri_with_escapes_counts_and_a_pyarrow_file_object_is_named_in_a_warning(tmp_path: Path) -> None:
    import pandas as pd

    source = """
    import pathlib
    import pyarrow as pa
    import pyarrow.parquet as pq
    import nbflow

    @nbflow.task
    def by_uri(uri):
        return int(pq.read_table(uri)["a"].to_pandas().sum())

    @nbflow.task
    def by_file_object(path):
        return int(pq.read_table(pa.OSFile(path))["a"].to_pandas().sum())

    @nbflow.task
    def by_memory_map(path):
        return int(pq.read_table(pa.memory_map(path))["a"].to_pandas().sum())

    uri = pathlib.Path("with space.parquet").absolute().as_uri()
    print(by_uri(uri, return_state=True).name, by_uri(uri))
    print(by_file_object("with space.parquet"), by_memory_map("with space.parquet"))
    """
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "with space.parquet")
    output = run_script(tmp_path, source)
    assert lines(output) == ["Completed 1", "1 1"]
    assert "NbflowWarning: a cached call reads a pyarrow OSFile, which nbflow cannot watch" in output, output
    assert output.count("cannot watch") == 1, output  # the memory map's path was seen
    pd.DataFrame({"a": [2]}).to_parquet(tmp_path / "with space.parquet")
    later = time.time_ns() + 5_000_000_000
    os.utime(tmp_path / "with space.parquet", ns=(later, later))
    assert lines(run_script(tmp_path, source))[0] == "Completed 2"
