"""One measurement in a fresh process, for ``bench_overhead.py``: ``python _worker.py CASE '{json params}'``.

Prints one JSON object (the timings, in seconds) as its last line of output. Every case does its own
warm-up before it starts a clock; a case that measures a fresh process's first call says so.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

clock = time.perf_counter


def trivial(x: int) -> int:
    """The trivial task every library caches: its own work is a few tens of nanoseconds."""
    return x + 1


def make_array(seed: int, size: int) -> Any:
    """A large result: ``size`` float64 values."""
    import numpy as np

    return np.full(size, float(seed))


# -- the ways to cache a call ----------------------------------------------------------------------

def floor_cached(fn: Callable[..., Any], home: str) -> Callable[..., Any]:
    """The bare floor: a pickle + xxh3-128 key, the result pickled into a diskcache (protocol 5)."""
    import diskcache
    import xxhash

    cache = diskcache.Cache(home)
    name = f"{fn.__module__}.{fn.__qualname__}"

    def call(*args: Any) -> Any:
        key = xxhash.xxh3_128_hexdigest(pickle.dumps((name, args), protocol=5))
        raw = cache.get(key)
        if raw is not None:
            return pickle.loads(raw)
        result = fn(*args)
        cache.set(key, pickle.dumps(result, protocol=5))
        return result

    return call


def cached(lib: str, fn: Callable[..., Any], home: str) -> Callable[..., Any]:
    """``fn`` cached under ``home`` by ``lib``."""
    if lib in ("nbflow", "nbflow-aged"):
        import nbflow

        if lib == "nbflow-aged":
            # As if every entry were older than the store's touch interval (a kernel restarted the next day):
            # the first hit of each entry in a while rewrites its record for the LRU bookkeeping.
            from nbflow.store.store import ResultStore

            ResultStore.touch_interval = 0.0
        nbflow.configure(home=home)
        return nbflow.task(fn)
    if lib == "joblib":
        import joblib

        return joblib.Memory(home, verbose=0).cache(fn)
    if lib == "diskcache":
        import diskcache

        return diskcache.Cache(home).memoize()(fn)
    if lib == "floor":
        return floor_cached(fn, home)
    if lib == "marimo":
        from _marimo_cases import persistent

        return persistent(fn, home)
    raise SystemExit(f"unknown library {lib!r}")


# -- cases ---------------------------------------------------------------------------------------------

def case_calls(p: dict[str, Any]) -> dict[str, Any]:
    """Per-call time of ``n`` calls of the trivial task, all misses (a new store) or all hits (entries an
    earlier process stored). The first call (on input -1) is the warm-up: it opens the store and pays
    every once-per-definition cost, which ``case_first`` measures on its own."""
    call = cached(p["lib"], trivial, p["home"])
    n = p["n"]
    # The warm-up's state tells the driver whether this process hit what an earlier one stored.
    if p["lib"].startswith("nbflow"):
        state = call(-1, return_state=True).name
    elif p["lib"] == "marimo":
        call(-1)
        state = "Cached" if call.hits else "Miss"
    else:
        state = None
    inputs = list(range(n))
    # Until every result is committed: nbflow commits quick results in batches (the others, at once).
    flush = _nbflow_flush if p["lib"].startswith("nbflow") else _nothing
    gc.collect()
    started = clock()
    for x in inputs:
        call(x)
    flush()
    per_call = (clock() - started) / n
    if state == "Cached" and p["lib"] == "marimo" and call.hits != n + 1:
        state = f"{call.hits - 1} hits of {n}"
    started = clock()
    for x in inputs:
        trivial(x)
    plain = (clock() - started) / n
    return {"per_call": per_call, "plain": plain, "state": state}


def _nbflow_flush() -> None:
    from nbflow.engine.runtime import flush_store

    flush_store()


def _nothing() -> None:
    pass


def case_first(p: dict[str, Any]) -> dict[str, Any]:
    """``import nbflow`` in a fresh process, then the first cached result (a hit an earlier process stored):
    everything a restarted kernel pays before its first cached cell."""
    started = clock()
    import nbflow

    imported = clock()
    task = nbflow.task(trivial)
    state = task(-1, return_state=True)
    first = clock()
    if state.name != "Cached":
        raise SystemExit(f"the first call did not hit the entry an earlier process stored: {state.name}")
    return {"import": imported - started, "first": first - imported,
            "modules": len(sys.modules)}


def case_fingerprint(p: dict[str, Any]) -> dict[str, Any]:
    """Throughput (bytes per second, best of ``rounds``) of fingerprinting large inputs, next to a plain
    memory copy, xxh3 over the raw buffer, pickle -> bytes -> xxh3 and joblib.hash; plus the peak memory
    the fingerprint allocates (tracemalloc) to show it copies nothing."""
    import tracemalloc

    import joblib
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import xxhash

    from nbflow.hashing import fingerprint

    size = p["size"]
    rounds = p["rounds"]
    array = np.random.default_rng(0).random(size // 8)
    target = np.empty_like(array)
    target[:] = 1.0  # touch every page once, so the copy measures bandwidth, not page faults
    columns = 8
    frame = pd.DataFrame({f"c{i}": array[i::columns] for i in range(columns)})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    rows = p["object_rows"]
    words = np.array([f"w{i % 1000}-{i}" for i in range(rows)], dtype=object)
    # dtype=object said explicitly: from a list or an object array of strings pandas 3 infers its `str` dtype
    # (arrow-backed), which has its own row.
    mixed = pd.DataFrame({"x": np.arange(rows, dtype=np.float64), "name": pd.Series(words, dtype=object)})
    mixed_bytes = int(mixed.memory_usage(deep=True, index=True).sum())
    text = pd.DataFrame({"x": np.arange(rows, dtype=np.float64), "name": pd.Series(words, dtype="str")})
    text_bytes = int(text.memory_usage(deep=True, index=True).sum())

    def xxh3_raw() -> None:
        xxhash.xxh3_128(memoryview(array).cast("B")).hexdigest()

    def pickled() -> None:
        xxhash.xxh3_128_hexdigest(pickle.dumps(array, protocol=5))

    variants: dict[str, tuple[Callable[[], Any], int]] = {
        "memory copy": (lambda: np.copyto(target, array), array.nbytes),
        "xxh3 raw buffer": (xxh3_raw, array.nbytes),
        "nbflow ndarray": (lambda: fingerprint(array), array.nbytes),
        "nbflow DataFrame": (lambda: fingerprint(frame), array.nbytes),
        "nbflow arrow Table": (lambda: fingerprint(table), array.nbytes),
        "nbflow object column": (lambda: fresh_fingerprint(mixed), mixed_bytes),
        "nbflow str column": (lambda: fresh_fingerprint(text), text_bytes),
    }
    if not p.get("quick"):
        variants["pickle->xxh3"] = (pickled, array.nbytes)
        variants["joblib.hash"] = (lambda: joblib.hash(array), array.nbytes)
        variants["joblib.hash object column"] = (lambda: joblib.hash(mixed), mixed_bytes)
        variants["joblib.hash str column"] = (lambda: joblib.hash(text), text_bytes)
    best: dict[str, float] = {}
    names = list(variants)
    for index in range(rounds):  # interleaved: every variant once per round
        # Forward, then backward: on this kind of VM a pass over one large buffer runs slower straight
        # after a large copy or hash of another (measured: the DataFrame ~9 GB/s after the ndarray's hash,
        # ~13 after its own), so no variant always follows the same one.
        for name in names if index % 2 == 0 else names[::-1]:
            run = variants[name][0]
            started = clock()
            run()
            seconds = clock() - started
            best[name] = min(best.get(name, seconds), seconds)
    rates = {name: variants[name][1] / seconds for name, seconds in best.items()}
    # No copy of the data: the fingerprint's peak allocation, next to the array's size.
    tracemalloc.start()
    fingerprint(array)
    fingerprint(frame)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Object columns hashed by value: equal strings in other objects fingerprint alike, a changed one not.
    same = mixed.copy(deep=True)
    same["name"] = pd.Series([str(w)[:] + "" for w in words], dtype=object)
    changed = mixed.copy(deep=True)
    changed.loc[rows // 2, "name"] = "changed"
    by_value = fingerprint(same) == fingerprint(mixed) and fingerprint(changed) != fingerprint(mixed)
    return {"rates": rates, "peak_alloc": peak, "object_by_value": by_value,
            "object_bytes": mixed_bytes, "str_bytes": text_bytes, "size": array.nbytes}


def fresh_fingerprint(value: Any) -> str:
    """A fingerprint computed, not remembered: nbflow's memos of unchanged string columns emptied first."""
    from nbflow.hashing import _libraries, fingerprint

    getattr(_libraries, "_STRINGS_MEMO", {}).clear()
    memo = getattr(_libraries, "_ObjectsMemo", None)
    if memo is not None:
        memo.table.clear()
    return fingerprint(value)


def case_bigstore(p: dict[str, Any]) -> dict[str, Any]:
    """Storing a large array result: the cached call's time less the same call uncached (the task's own
    work), next to ``np.save`` of the same array; both fsync the file (nbflow always does)."""
    import numpy as np

    lib, size, home = p["lib"], p["size"], p["home"]
    if lib == "np.save":
        make_array(-1, size)
        array = make_array(1, size)
        path = os.path.join(home, "array.npy")
        os.makedirs(home, exist_ok=True)
        started = clock()
        with open(path, "wb") as file:
            np.save(file, array)
            file.flush()
            os.fsync(file.fileno())
        return {"seconds": clock() - started}
    call = cached(lib, make_array, home)
    call(0, 16)  # warm-up: a tiny entry, read again by the hit process's warm-up
    make_array(-1, size)
    started = clock()
    make_array(2, size)
    plain = clock() - started
    started = clock()
    call(1, size)
    return {"seconds": clock() - started - plain, "plain": plain}


def case_bighit(p: dict[str, Any]) -> dict[str, Any]:
    """A fresh process loading the large array result (after a warm-up on a tiny entry of the same task),
    next to ``np.load`` of the same data. ``touch`` also reads every page of the result (a memory-mapped
    load is fast until the data is used)."""
    import numpy as np

    lib, size, home = p["lib"], p["size"], p["home"]
    if lib.startswith("np.load"):
        path = os.path.join(home, "array.npy")
        started = clock()
        value = np.load(path, mmap_mode="r" if lib == "np.load mmap" else None)
        loaded = clock() - started
    else:
        call = cached(lib, make_array, home)
        call(0, 16)
        started = clock()
        value = call(1, size)
        loaded = clock() - started
    assert value.shape == (size,)
    started = clock()
    total = float(np.add.reduce(value[:: 512]))  # one read per page
    touched = clock() - started
    assert total == (size + 511) // 512
    mapped = isinstance(value, np.memmap) or not value.flags.owndata
    return {"seconds": loaded, "touch": touched, "no_own_data": mapped}


def case_flow(p: dict[str, Any]) -> dict[str, Any]:
    """A flow of ``n`` trivial cached tasks (all misses), optionally with a live TaskGraph attached the way
    a notebook cell shows it (its messages go to a comm that JSON-encodes them, as the kernel's would).
    Reports the time per task, per tenth of the flow (quadratic behaviour shows as a rising curve) and the
    memory the flow keeps (RSS, and tracemalloc when ``trace``) and the most private memory it used (anonymous
    resident memory, sampled every tenth of the flow: RSS also counts the pages of the store's database file
    that SQLite maps, which are the file's, shared and reclaimable)."""
    import nbflow
    import nbflow.engine.flow_engine as flow_engine

    nbflow.configure(home=p["home"])
    n, live, trace = p["n"], p["live"], p.get("trace", False)
    task = nbflow.task(trivial)
    marks: list[float] = []
    anon: list[int] = []
    step = max(1, n // 10)

    @nbflow.flow
    def many(count: int, offset: int) -> int:
        total = 0
        for i in range(count):
            if i % step == 0:
                anon.append(_anonymous_rss())
                marks.append(clock())
            total += task(offset + i)
        marks.append(clock())
        return total

    graphs: list[Any] = []
    if live:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_widget import RecordingComm

        from nbflow.ui import TaskGraph

        def show(run: Any) -> None:
            graph = TaskGraph([run])
            graph.comm = RecordingComm()
            graphs.append(graph)

        flow_engine.frontend_hook = show  # type: ignore[assignment]
    many(50, -10_000)  # warm-up: imports, store, code identity, a first graph
    for graph in graphs:
        graph.close()
    graphs.clear()
    gc.collect()
    if trace:
        import tracemalloc

        tracemalloc.start()
    rss_before, anon_before = _rss(), _anonymous_rss()
    del marks[:], anon[:]
    started, cpu_started = clock(), time.process_time()
    many(n, 0)
    seconds, cpu = clock() - started, time.process_time() - cpu_started
    gc.collect()
    kept, peak = tracemalloc.get_traced_memory() if trace else (None, None)
    tenths = [b - a for a, b in itertools.pairwise(marks)]
    return {"seconds": seconds, "cpu": cpu, "per_task": seconds / n, "tenths": tenths,
            "rss_growth": _rss() - rss_before, "rss_peak_growth": max(0, _peak_rss() - rss_before),
            "anon_peak_growth": max([*anon, _anonymous_rss()]) - anon_before,
            "traced_kept": kept, "traced_peak": peak}


def case_submit(p: dict[str, Any]) -> dict[str, Any]:
    """``Task.submit`` on the default thread pool inside a flow: ``n`` submits then a wait for all, against
    ``n`` direct calls of the same task in the same flow; rounds interleaved. The task is uncached, so that
    what differs is the submit machinery alone (cached misses would overlap their store writes on the pool's
    threads and make submitting look cheaper than calling)."""
    import nbflow
    from nbflow.cache_policies import NONE

    nbflow.configure(home=p["home"])
    n, rounds = p["n"], p["rounds"]
    task = nbflow.task(cache_policy=NONE, persist_result=False)(trivial)
    offset = [0]

    @nbflow.flow
    def direct(count: int) -> float:
        base = offset[0] = offset[0] + count
        started = clock()
        for i in range(count):
            task(base + i)
        return clock() - started

    @nbflow.flow
    def submitted(count: int) -> float:
        base = offset[0] = offset[0] + count
        started = clock()
        futures = [task.submit(base + i) for i in range(count)]
        nbflow.wait(futures)
        for future in futures:
            future.result()
        return clock() - started

    offset[0] = 10**9
    direct(20)
    submitted(20)
    plain, pooled = [], []
    for _ in range(rounds):
        plain.append(direct(n) / n)
        pooled.append(submitted(n) / n)
    return {"direct": statistics.median(plain), "submit": statistics.median(pooled)}


def case_marimo_frame(p: dict[str, Any]) -> dict[str, Any]:
    """marimo's variant of ``bench_strings.py``'s DataFrame result (its section 4): see ``_marimo_cases``."""
    from _marimo_cases import frame_result

    return frame_result(p)


def _peak_rss() -> int:
    """The most resident memory this process has had (bytes; Linux reports kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _anonymous_rss() -> int:
    """Resident memory of this process that no file backs (bytes): its heap and anonymous maps."""
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "calls": case_calls,
    "first": case_first,
    "fingerprint": case_fingerprint,
    "bigstore": case_bigstore,
    "bighit": case_bighit,
    "flow": case_flow,
    "submit": case_submit,
    "marimo_frame": case_marimo_frame,
}


def main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    case, params = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if "home" in params and params.get("lib") == "nbflow":
        os.environ["NBFLOW_HOME"] = params["home"]
    result = CASES[case](params)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
