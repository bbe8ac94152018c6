"""Every fast path of the store and the run history agrees with the plain way, on randomized inputs.

Each fast path exists for speed alone (a hit or a miss is a few dozen microseconds): the HMAC computed from
pre-keyed SHA-256 states, a record's JSON written directly, a task run's row written directly, and saves
written to diskcache's table with nbflow's own SQL. Each is checked here against what it stands for.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbflow import runs
from nbflow.runs import StateEntry, TaskRunRecord
from nbflow.store import ResultStore
from nbflow.store.record import Record, _encoder
from nbflow.store.sealing import MAC_DOMAIN, Sealer, mac_of

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False)
any_float = st.floats()  # NaN and infinities too: the fast writers must refuse or match
numbers = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), finite)


@SETTINGS
@given(secret=st.binary(min_size=1, max_size=64), stream=st.binary(max_size=5000), key=text)
def test_the_prekeyed_hmac_is_hmac_sha256(secret: bytes, stream: bytes, key: str) -> None:
    sealer = Sealer(secret)
    record, payload = sealer.entry(key, "demo.mac", None, None, "pickle", stream, [], "")
    assert payload[4:36] == hmac.new(secret, MAC_DOMAIN + payload[36:], "sha256").digest()
    assert record.mac == mac_of(payload)
    assert sealer.verify(key, payload)[-1] == len(payload) - len(stream)


def test_the_store_seals_with_the_same_hmac(tmp_path: Path) -> None:
    # The store's own states, from its own key file: a payload's MAC is hmac.new over everything after it.
    store = ResultStore(tmp_path / "home", size_limit=1 << 30, secret_file=tmp_path / "secret.key")
    store.save("k", {"a": [1, 2, 3]}, task_name="demo.mac")
    payload = store._cache.get(f"{store._kstart}k:p")
    assert payload[4:36] == hmac.new(store._secret, MAC_DOMAIN + payload[36:], "sha256").digest()
    store.close()


records = st.builds(
    Record,
    key=text, task_name=text, run_id=st.none() | text, created=any_float, expires=st.none() | any_float,
    last_used=any_float, size=numbers, serializer=text, format_version=st.integers(-5, 10),
    buffers=st.lists(st.tuples(numbers, text), max_size=3), stream_size=numbers, mac=text, hits=numbers,
    blob_id=text,
)


@SETTINGS
@given(record=records)
def test_a_records_direct_json_is_what_the_encoder_writes(record: Record) -> None:
    try:
        plain: str | None = _encoder.encode(record.to_dict())
    except ValueError:  # NaN or an infinity: not JSON, and no record the store writes holds one
        plain = None
    try:
        direct: str | None = record._json_directly()
    except (TypeError, ValueError):
        direct = None  # refused: to_json() then uses the encoder
    if direct is not None:
        assert direct == plain
    if plain is None:
        with pytest.raises(ValueError):
            record.to_json()
    else:
        assert record.to_json() == plain


entries = st.builds(StateEntry, name=text, type=text, timestamp=any_float, message=st.none() | text)
task_runs = st.builds(
    TaskRunRecord,
    id=text, run_id=text, task_name=text, task_key=text, state=text, state_type=text, attempts=st.integers(0, 9),
    start_time=st.none() | any_float, end_time=st.none() | any_float, cache_key=st.none() | text,
    key_parts=st.dictionaries(text, text, max_size=3), cache_hit=st.booleans(),
    persisted=st.none() | st.booleans(), error=st.none() | text, traceback=st.none() | text,
    logs=st.lists(text, max_size=3), history=st.lists(entries, max_size=3),
    inputs=st.dictionaries(text, text, max_size=3), result=st.none() | text, upstream=st.lists(text, max_size=3),
    tags=st.lists(text, max_size=3), seq=st.integers(0, 2**40),
)


@SETTINGS
@given(record=task_runs)
def test_a_task_runs_direct_row_is_what_the_encoder_writes(record: TaskRunRecord) -> None:
    try:
        direct = runs._fast_json(record)
    except (TypeError, ValueError):
        return  # refused: the generic writer takes it
    assert json.loads(direct) == runs._json_safe(record._compact())


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), values), min_size=1, max_size=6))
def test_direct_sql_writes_are_read_back_as_diskcaches_own(tmp_path_factory: Any,
                                                           batch: list[tuple[str, Any]]) -> None:
    # The same saves (some deferred into batches) through nbflow's own SQL and through diskcache's API:
    # the same entries come back, through either way of reading.
    results = []
    for direct in (True, False):
        home = tmp_path_factory.mktemp("direct" if direct else "api")
        store = ResultStore(home, size_limit=1 << 30, secret_file=home / "secret.key")
        store._fast_writes = direct and store._fast_writes
        for index, (key, value) in enumerate(batch):
            store.save(key, value, task_name="demo.fast", defer=index % 2 == 0)
        store.flush()
        assert store.volume() == sum(record.size for record in store.records())
        loaded = {record.key: store.load(record.key) for record in store.records()}
        store._fast_reads = False  # diskcache's own get() of every row
        assert {record.key: store.load(record.key) for record in store.records()} == loaded
        results.append((loaded, sorted((r.key, r.size, r.serializer) for r in store.records())))
        store.close()
    assert results[0] == results[1]
    assert results[0][0] == dict(batch)  # the last save of each key
