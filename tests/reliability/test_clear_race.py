"""`nbflow cache clear` while a kernel saves: no save breaks, and no entry committed meanwhile loses its files.

A writer process saves entries with array buffers (files under blobs/) in a loop while the CLI clears the
store again and again. Every save must succeed, and every entry still in the index afterwards must load,
with no "failed verification" warning (which would mean clear deleted the files of an entry committed after
it started: it looks like tampering to the user).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np

from nbflow.exceptions import NbflowWarning
from nbflow.store import ResultStore
from tests.reliability.conftest import ROOT

WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from nbflow.store import ResultStore
    store = ResultStore(Path(sys.argv[1]), size_limit=1 << 34, secret_file=Path(sys.argv[2]))
    errors, saved, deadline = [], 0, time.monotonic() + float(sys.argv[3])
    while time.monotonic() < deadline:
        try:
            store.save(f"k{saved % 40}", np.full(50_000, saved, dtype=np.int64), task_name="demo.race")
        except Exception as error:
            errors.append(repr(error))
        saved += 1
    store.close()
    print(json.dumps({"saved": saved, "errors": errors}))
""")


def test_clear_racing_a_saving_process_loses_no_committed_entry(tmp_path: Path, child_env: dict[str, str]) -> None:
    home, secret = tmp_path / "home", tmp_path / "secret.key"
    ResultStore(home, size_limit=1 << 34, secret_file=secret).close()
    env = {**child_env, "NBFLOW_SECRET_FILE": str(secret)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(secret), "6"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    clears = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-m", "nbflow.cli", "cache", "clear", "--home", str(home)],
                              capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        clears += 1
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    report = json.loads(out)
    assert report["errors"] == []
    assert report["saved"] > 50 and clears >= 3, (report["saved"], clears)

    store = ResultStore(home, size_limit=1 << 34, secret_file=secret)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        records = list(store.records())
        assert records, "the writer's last saves came after the last clear"
        for record in records:
            value = store.load(record.key)
            assert isinstance(value, np.ndarray) and (value == value[0]).all()
    store.close()
