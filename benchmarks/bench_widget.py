"""What the live task graph costs a flow: a flow of many quick tasks, run with no graph and with a graph
attached (the way a notebook cell shows it), side by side in one process — so the ratio holds on a noisy
machine. The graph's messages go to a recording comm that JSON-encodes them as the kernel would, and
the benchmark reports how many were sent and how large they were. Also: layout time for 1,000 nodes.

Run with ``make bench`` (or ``python benchmarks/bench_widget.py [--quick]``).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import tempfile
import time
from typing import Any


class RecordingComm:
    """Stands in for the kernel's comm: encodes every message to JSON, as the kernel would, and counts."""

    kernel = True
    comm_id = "bench"

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    def send(self, data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        self.messages += 1
        self.bytes += len(json.dumps(data, default=str))

    def on_msg(self, callback: Any) -> None:
        pass

    def on_close(self, callback: Any) -> None:
        pass

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass


def bench_flow(n: int, rounds: int, mapped: bool = False) -> None:
    """``n`` quick tasks called one after the other, or (``mapped``) as one ``Task.map`` on the thread pool."""
    import nbflow
    import nbflow.engine.flow_engine as flow_engine
    from nbflow import events
    from nbflow.cache_policies import NONE
    from nbflow.ui import TaskGraph

    nbflow.configure(home=tempfile.mkdtemp(prefix="nbflow-bench-"))

    @nbflow.task(cache_policy=NONE, persist_result=False)
    def tick(i: int) -> int:
        return i + 1

    @nbflow.flow
    def sequential(count: int) -> int:
        total = 0
        for i in range(count):
            total += tick(i)
        return total

    @nbflow.flow
    def in_parallel(count: int) -> int:
        return sum(future.result() for future in tick.map(range(count)))

    many = in_parallel if mapped else sequential

    graphs: list[tuple[TaskGraph, RecordingComm]] = []

    def show(run: Any) -> None:  # what nbflow.ui.auto does in a kernel, with a recording comm
        graph = TaskGraph([run])
        comm = RecordingComm()
        # The widget keeps its own comm (replacing it would leave the original one, filed with the comm
        # manager, holding every closed graph and its 10,000 task runs alive); only sending is recorded.
        graph.comm.send = comm.send
        graphs.append((graph, comm))

    def plain(_: Any) -> None:
        pass

    many(200)  # warm up imports and the store
    def noop(_: Any) -> None:
        pass

    timings: dict[str, list[float]] = {"no graph": [], "no-op subscriber": [], "live graph": []}
    cpu: dict[str, list[float]] = {label: [] for label in timings}  # process CPU: both threads, less load noise
    labels = list(timings)
    last: dict[str, Any] = {}
    for round_ in range(rounds):
        # Interleaved, so background load hits every variant alike, and in a rotating order, so that no
        # variant always runs right after another one's garbage.
        for label in labels[round_ % 3:] + labels[: round_ % 3]:
            flow_engine.frontend_hook = show if label == "live graph" else plain  # type: ignore[assignment]
            unsubscribe = events.subscribe(noop) if label == "no-op subscriber" else None
            gc.collect()  # every variant starts from the same heap, not from the previous one's leftovers
            started, cpu_started = time.perf_counter(), time.process_time()
            many(n)
            timings[label].append(time.perf_counter() - started)
            cpu[label].append(time.process_time() - cpu_started)
            if unsubscribe is not None:
                unsubscribe()
            if graphs:
                # Close the graph outside the timed part, so that rounds do not pile up graphs of 10,000
                # task runs in memory (which makes every later garbage collection slower).
                graph, comm = graphs.pop()
                sender = graph._sender
                graph.close()
                if sender is not None:
                    sender.join(timeout=5)  # it holds the graph: gone before the next round's gc.collect()
                last = {"graph": graph, "comm": comm, "seconds": timings[label][-1]}
    base = statistics.median(timings["no graph"])
    subscribed = statistics.median(timings["no-op subscriber"])
    live = statistics.median(timings["live graph"])
    graph, comm = last["graph"], last["comm"]
    kind = "Task.map of" if mapped else "flow of"
    print(f"{kind} {n:,} quick tasks, median of {rounds} interleaved rounds")
    for label, seconds in (("no graph", base), ("no-op subscriber", subscribed), ("live graph", live)):
        print(f"  {label:18s}{seconds:8.3f} s   ({seconds / n * 1e6:6.1f} µs per task)")
    # Each round's live run against the same round's run without a graph: paired, so a machine that gets
    # busier or a heap that grows during the benchmark does not move the ratio.
    paired = statistics.median(a / b for a, b in zip(timings["live graph"], timings["no graph"], strict=True))
    paired_cpu = statistics.median(a / b for a, b in zip(cpu["live graph"], cpu["no graph"], strict=True))
    print(f"  ratio live/no-graph  {paired:.3f}  (overhead {100 * (paired - 1):+.1f} %; median of the rounds' ratios; "
          f"medians {live / base:.3f}, best rounds {min(timings['live graph']) / min(timings['no graph']):.3f})")
    print(f"  CPU ratio live/no-graph  {paired_cpu:.3f}  (process CPU time, both threads; overhead "
          f"{100 * (paired_cpu - 1):+.1f} %)")
    print(f"  ratio live/no-op subscriber  {live / subscribed:.3f}  (the widget's own share; the rest is the "
          "engine publishing events to any subscriber)")
    per_second = comm.messages / last["seconds"]
    print(f"  messages sent {comm.messages} ({per_second:.1f}/s), {comm.bytes / 1e6:.2f} MB JSON, "
          f"{len(graph.graph['nodes']):,} nodes in the final graph")
    print(f"  the graph's own CPU time (applying events, layout, JSON, sending): {graph.cpu_seconds:.3f} s = "
          f"{100 * graph.cpu_seconds / last['seconds']:.1f} % of that flow's wall time")
    print(f"  full graph send at the end: {1000 * graph._full_cost:.0f} ms for {len(graph.graph['nodes']):,} nodes")


def bench_layout(n: int) -> None:
    from nbflow.ui import count_crossings, layered_layout

    rng = random.Random(1)
    nodes = list(range(n))
    edges = [(rng.randrange(max(0, v - 30), v), v) for v in range(1, n) for _ in range(rng.randint(0, 2))]
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        layout = layered_layout(nodes, edges)
        runs.append(time.perf_counter() - started)
    print(f"layout of {n:,} nodes / {len(edges):,} edges: {1000 * min(runs):.1f} ms "
          f"({layout.crossings} crossings, {count_crossings(layered_layout(nodes, edges), edges)} by segment count)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (for the test suite)")
    args = parser.parse_args()
    bench_layout(1000)
    if args.quick:
        bench_flow(2000, rounds=2)
        bench_flow(2000, rounds=2, mapped=True)
    else:
        bench_flow(10_000, rounds=7)
        bench_flow(10_000, rounds=7, mapped=True)


if __name__ == "__main__":
    main()
