"""`TaskGraph`: the live graph of task runs, an anywidget widget. Python holds the model and the layout;
the browser (``widgets/graph.js``) draws, pans and zooms, and sends commands back.

Live updates are coalesced. The engine's event callback queues a task run the first time it is seen and
otherwise only wakes the sender (O(1), in the engine's thread); a per-widget sender thread wakes at most
``MAX_RATE`` times a second (``BUSY_RATE`` past ``BUSY_CALLS`` task runs), places the new task runs, looks
at the calls still under way
(:meth:`GraphModel.poll`), sends small state patches, and re-sends the laid-out graph only when its shape
changed — less often for large graphs, so layout and JSON never take more than a few percent of the
process. A task called thousands of times is drawn as one node (see ``FOLD_AT``), so a huge flow stays a
small graph. The end of a flow run is flushed at once in the engine's thread, so the final state is part of
the cell's own output (nbclient and ``nbflow run`` record it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anywidget
import traitlets
from pydantic_core import to_json

from nbflow import events
from nbflow.engine import manual_retry
from nbflow.ui import model as model_module
from nbflow.ui.model import Command, GraphModel, GraphPayload, StatePatch
from nbflow.ui.svg import render_html

if TYPE_CHECKING:
    from IPython.display import DisplayHandle

    from nbflow.runs import RunRecord, TaskRunRecord

__all__ = ["TaskGraph", "session_graph"]

_log = logging.getLogger("nbflow.ui")

MAX_RATE = 10.0  # messages a second, at most, while a flow runs
# Past this many task runs a graph is looked at less often: each look wakes a thread that takes the GIL
# from the engine, which costs a flow of 10,000 quick tasks a few percent at ten a second (bench_widget.py).
BUSY_CALLS = 1000
BUSY_RATE = 4.0
# A full graph (layout + payload + JSON) waits until sending full graphs has used at most this share of
# the wall time: a 10,000-node graph costs ~0.1 s to send, so it goes out every few seconds, while small
# graphs go out at MAX_RATE. (bench_widget.py measures what the graph costs a flow.)
SEND_SHARE = 0.03
PATCH_SHARE = 0.25  # above this share of the nodes changed, a full graph is cheaper than a patch
IDLE_EXIT = 2.0  # seconds without events after which a graph's sender thread ends
# The task calls a session graph keeps, the newest: as many as the session run itself keeps in memory. A
# session graph sees every call the kernel makes and would otherwise hold every record (~1.6 kB a call)
# for as long as it is displayed. Past twice this many it is rebuilt from the newest runs' records.
SESSION_CALLS = 10_000


def _asset_dir() -> Path:
    """Where graph.js and graph.css are: inside the package in a wheel (``nbflow/_widgets``), at the top
    of the repository in an editable install (``widgets/``)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_widgets", here.parent / "widgets"):
        if (candidate / "graph.js").is_file():
            return candidate
    raise FileNotFoundError(f"nbflow's widget files (graph.js) are missing next to {here}")


_ASSETS = _asset_dir()


class TaskGraph(anywidget.AnyWidget):
    """A live graph of the task runs of some flow runs (or of the whole session).

    Shown automatically when a flow is called in a notebook cell; build one yourself with
    ``TaskGraph([run])`` or :func:`session_graph`. Nodes are coloured by state; clicking one shows its
    details; a failed node has a Retry button and a failed flow run "Retry failed".
    """

    # Read once: the widget files are assets of the package, not something to watch for edits.
    _esm = (_ASSETS / "graph.js").read_text(encoding="utf-8")
    _css = (_ASSETS / "graph.css").read_text(encoding="utf-8")

    # The laid-out graph as a JSON string: ipywidgets walks a dict trait looking for binary buffers and
    # traitlets compares dicts deeply, which costs more than the layout itself on a 10,000-node graph.
    graph_json = traitlets.Unicode("{}").tag(sync=True)
    patch = traitlets.Dict().tag(sync=True)
    details = traitlets.Dict().tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)
    notice = traitlets.Unicode("").tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)

    def __init__(self, runs: Sequence[RunRecord] = (), *, session: bool = False, live: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._model = GraphModel()
        self._lock = threading.RLock()
        # What the engine's thread touches lives in a plain slotted object (see _Inbox); the names below
        # are the same objects, for the sender's side.
        self._inbox = inbox = _Inbox(self, {run.id for run in runs})
        self._queue = inbox.queue
        self._changed = inbox.changed
        self._wake = inbox.wake
        self._roots = inbox.roots
        self._closed = False
        self._rev = 0
        self._trim_at = 2 * SESSION_CALLS
        self._sent_structure = -1
        self._last_flush = 0.0
        self._reported_since_last_look = False
        self._last_full = 0.0
        self._full_cost = 0.0
        self._sent_ids: set[str] = set()
        self._pending_patch: StatePatch = {"rev": 0, "nodes": {}, "runs": {}}
        self._display_handle: DisplayHandle | None = None
        self._payload: GraphPayload = {"rev": 0, "nodes": [], "edges": [], "runs": [], "width": 0, "height": 0}
        self.session = session
        self.messages_sent = 0
        self.cpu_seconds = 0.0  # CPU time spent applying events and sending (for the benchmark)
        for run in runs:
            self._model.add_run(run)
        self.on_msg(self._on_custom)
        self.observe(self._on_selected, names="selected")
        with self._lock:
            self._send_graph()
        if live:
            _dispatcher.register(self)

    # -- engine side (any thread) ---------------------------------------------------------------------
    @property
    def _sender(self) -> threading.Thread | None:
        return self._inbox.sender

    def _start_sender(self) -> None:
        with self._lock:
            inbox = self._inbox
            if inbox.sender is None and not self._closed:
                inbox.sender = threading.Thread(target=self._send_loop, name="nbflow-graph", daemon=True)
                inbox.sender.start()

    def _send_loop(self) -> None:
        inbox = self._inbox
        while not self._closed:
            interval = 1.0 / (MAX_RATE if len(inbox.seen) < BUSY_CALLS else BUSY_RATE)
            # The engine reports a task run's first event only (see _Dispatcher): while calls are under way
            # the thread looks at them at its pace, events or not, so that their next states show.
            under_way = bool(self._model._active)
            if not self._wake.wait(timeout=interval if under_way else IDLE_EXIT) and not under_way:
                # Idle: end the thread, so a long session does not keep one per graph it ever showed. The
                # next event starts a new one; the re-check under the lock closes the race with it.
                with self._lock:
                    self._inbox.sender = None
                    if not self._wake.is_set():
                        return
                    self._inbox.sender = threading.current_thread()
                continue
            # Paced by the last look, not the last message: a look that had nothing to send must not be
            # followed by another at once (the thread would spin, taking the GIL from the engine).
            wait = self._last_flush + interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # coalesce everything that arrives meanwhile into one message
            self._wake.clear()
            self._inbox.awake = False  # after clear(): an event from now on wakes the next look
            self._last_flush = time.monotonic()
            try:
                self.flush()
            except Exception:  # the graph must never take the kernel down
                _log.exception("nbflow graph update failed")

    # -- model → traits ---------------------------------------------------------------------------------
    def flush(self, final: bool = False) -> None:
        """Apply queued events and send what changed (a patch, or the whole graph if its shape changed).
        ``final`` sends the whole graph now whatever the rate, and refreshes the static picture."""
        cpu_started = time.thread_time()
        with self._lock:
            if self._closed:
                return
            changed_runs: set[str] = set()
            model = self._model
            inbox = self._inbox
            # The engine's reports of state changes are used only when they have been on since before the
            # last look (so every change since then is in them); otherwise every call under way is compared.
            reported = inbox.reporting and self._reported_since_last_look
            self._reported_since_last_look = inbox.reporting
            if not reported:
                self._changed.clear()
            # Calls under way first, so that a failure is known before a retry of it is placed.
            changed_nodes = model.poll(self._changed if reported else None)
            while self._queue:
                run, task_run, attempt, run_final = self._queue.popleft()
                if run.id not in model.runs:
                    model.add_run(run)
                changed_runs.add(run.id)
                if task_run is not None:
                    changed_nodes.add(model.add_task_run(run, task_run, attempt, run_final))
            if self.session and len(model.calls) > self._trim_at:
                model = self._trim()
                changed_nodes, changed_runs = set(), set()  # the whole graph goes out anew
            now = time.monotonic()
            structure_changed = model.structure_rev != self._sent_structure
            full_due = now - self._last_full >= self._full_cost / SEND_SHARE
            if final or (structure_changed and full_due):
                self._send_graph()
            else:
                self._send_patch(changed_nodes, changed_runs, full_due)
                if structure_changed:
                    self._wake.set()  # the new nodes follow once the layout budget allows
            if self.selected and self.selected in changed_nodes:
                self._refresh_details()
            # Many calls under way (a big Task.map): comparing them all at every look would cost more than
            # the engine's reports of their changes, so this graph asks for those until they are few again.
            wanted = len(model._active) > model_module.POLL_LIMIT
            if wanted != inbox.reporting and not self._closed:
                _dispatcher.report_changes(inbox, wanted)
            self.cpu_seconds += time.thread_time() - cpu_started
        if final:
            self._update_display()

    def _trim(self) -> GraphModel:
        """A session graph's model rebuilt from its newest calls: the session runs' (the engine keeps their
        newest calls only) and the newest flow runs' that fit in :data:`SESSION_CALLS` (whole runs, a
        subflow only with its parent). Called under the lock."""
        old = self._model
        sessions = [run for run in old.runs.values() if run.kind == "session"]
        budget = SESSION_CALLS - sum(len(run.task_runs) for run in sessions)
        flows = _newest_runs([run for run in old.runs.values() if run.kind != "session"], budget,
                             lambda run: run.task_run_count)
        model = GraphModel()
        for run in sorted([*sessions, *flows], key=lambda run: run.start_time):
            model.add_run(run)
        self._model = model
        # Events of a dropped call that is still under way place it again, as a new call.
        self._inbox.seen = set(model.alias)
        self._sent_structure = -1
        # Rebuilt again only once it has grown as much again: a rebuild costs a pass over what it keeps.
        self._trim_at = max(2 * SESSION_CALLS, 2 * len(model.calls))
        return model

    def _retryable(self) -> tuple[set[str], set[str]]:
        return set(manual_retry.failed_task_runs()), set(manual_retry.failed_flow_runs())

    def _send_graph(self) -> None:
        started = time.monotonic()
        tasks, flows = self._retryable()
        self._rev += 1
        payload = self._model.payload(self._rev, tasks, flows)
        self._sent_structure = self._model.structure_rev
        self._sent_ids = set(self._model.nodes)
        self._pending_patch = {"rev": self._rev, "nodes": {}, "runs": {}}
        self._payload = payload
        text = to_json(payload).decode()
        with self.hold_sync():
            self.graph_json = text
            # A copy, never the queued patch itself: the next patch is queued by changing that dict in
            # place, and traitlets would find the trait already equal to it and send nothing.
            self.patch = {"rev": self._rev, "nodes": {}, "runs": {}}
        self._sent()
        self._last_full = time.monotonic()
        self._full_cost = self._last_full - started

    def _send_patch(self, node_ids: Iterable[str], run_ids: Iterable[str], full_due: bool) -> None:
        model = self._model
        tasks, flows = self._retryable()
        patch = self._pending_patch
        known = len(self._sent_ids)
        added = 0
        for node_id in node_ids:
            node = model.nodes.get(node_id)
            if node is None or node_id not in self._sent_ids:
                continue  # not drawn yet: it comes with the next full graph
            patch["nodes"][node_id] = model.node_patch(node, tasks)
            added += 1
        for run_id in run_ids:
            run = model.runs.get(run_id)
            if run is not None:
                patch["runs"][run_id] = model.run_data(run, flows)
        if not added and not run_ids:
            return
        if full_due and len(patch["nodes"]) > max(50, PATCH_SHARE * known):
            self._send_graph()
            return
        # A new dict each time: traitlets compares by equality and would skip an in-place change.
        self.patch = {"rev": patch["rev"], "nodes": dict(patch["nodes"]), "runs": dict(patch["runs"])}
        self._sent()

    def _sent(self) -> None:
        self.messages_sent += 1

    def _update_display(self) -> None:
        handle = self._display_handle
        if handle is not None:
            try:
                handle.update(self)
            except Exception:
                _log.exception("could not update the task graph's display")

    # -- static fallback ---------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The widget view plus ``text/html`` with an SVG of the same graph, for places without widgets."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        # anywidget returns (data, metadata); ipywidgets' own method returns the data alone.
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        with self._lock:
            graph = self._payload
        data = {**data, "text/html": render_html(graph), "text/plain": plain_summary(graph)}
        return data, metadata

    def __repr__(self) -> str:
        with self._lock:
            graph = self._payload
        return plain_summary(graph)

    # -- commands from the browser -------------------------------------------------------------------------
    def _on_selected(self, change: dict[str, Any]) -> None:
        with self._lock:
            self._refresh_details()

    def _refresh_details(self) -> None:
        tasks, _ = self._retryable()
        details = self._model.details(self.selected, tasks, _earlier_runs_of(self._model, self.selected))
        self.details = cast(dict, details) if details is not None else {}

    def _on_custom(self, _widget: Any, content: Any, buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        command = cast(Command, content)
        try:
            self.command(command)
        except Exception as error:  # shown in the widget, never raised into the kernel's comm handler
            _log.debug("graph command %r failed", command, exc_info=True)
            self.notice = f"{type(error).__name__}: {error}"

    def command(self, command: Command) -> None:
        """Carry out a command from the browser: ``select`` a node, ``retry`` a failed node (then resume its
        failed flow run, so what depends on it runs), or ``retry_flow`` ("Retry failed")."""
        kind = command.get("type")
        if kind == "select":
            self.selected = command.get("id", "")
            return
        if kind == "retry":
            self._retry_node(command.get("id", ""))
        elif kind == "retry_flow":
            self._retry_flow(command.get("run", ""))
        else:
            raise ValueError(f"unknown command {kind!r}")

    def _retry_node(self, node_id: str) -> None:
        """Rerun a failed call with its original inputs — or every failed call of a group — then resume
        the failed flow run, so what depends on them runs."""
        with self._lock:
            model = self._model
            node = model.nodes.get(node_id) or model.calls.get(node_id)
            if node is None:
                raise manual_retry.NotRetryable(f"no task run {node_id!r} in this graph")
            retryable = set(manual_retry.failed_task_runs())
            targets = [task_run_id for task_run_id in model.retry_targets(node_id)
                       if node.members is None or task_run_id in retryable]
        if not targets:
            raise manual_retry.NotRetryable(f"{node.task_name}: no failed call this process can retry")
        label = node.task_name if len(targets) == 1 else f"{len(targets)} failed calls of {node.task_name}"
        self._running(f"retrying {label}…")
        try:
            outcome = manual_retry.retry_and_resume(targets)
        finally:
            self._done()
        shown = list(outcome.resumed.values()) or outcome.states  # a resumed flow's state says the most
        if len(shown) == 1:
            state = shown[0]
            self.notice = f"retry: {state.name}" + (f" ({state.message})" if state.message else "")
        else:
            failed = sum(not state.is_completed() for state in shown)
            self.notice = f"retry: {len(shown) - failed} of {len(shown)} Completed"

    def _retry_flow(self, run_id: str) -> None:
        self._running("retrying failed tasks…")
        try:
            state = manual_retry.retry_flow_run(run_id)
        finally:
            self._done()
        self.notice = f"retry failed: flow run {state.name}"

    def _running(self, notice: str) -> None:
        self.notice = notice
        self.busy = True
        _dispatcher.register(self)  # a finished graph stops listening; a retry makes it listen again

    def _done(self) -> None:
        self.flush(final=True)
        self.busy = False

    # -- lifecycle -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening to the engine and close the widget."""
        self._closed = True
        wake = getattr(self, "_wake", None)  # close() also runs from __del__ of a half-built widget
        if wake is not None:
            wake.set()
            _dispatcher.unregister(self)
        super().close()

    @property
    def graph(self) -> GraphPayload:
        """The graph as last sent to the browser (nodes with coordinates and states, edges, runs)."""
        return self._payload

    @property
    def model(self) -> GraphModel:
        """The graph model (nodes, edges, runs) — read it under no assumption of stability while a run goes."""
        return self._model


class _Inbox:
    """The engine-side half of a graph: what the engine's thread does for each event, on a plain slotted
    object (a widget's own attributes are found through traitlets' deep class hierarchy, which costs more
    per event than the work itself). Queues a task run the first time it is seen (the engine reports each
    once, see _Dispatcher), notes its later states only while ``reporting``, and wakes the sender — nothing
    more."""

    __slots__ = ("awake", "changed", "graph", "queue", "reporting", "roots", "seen", "sender", "wake")

    def __init__(self, graph: TaskGraph, roots: set[str]) -> None:
        self.graph = graph
        self.roots = roots
        self.seen: set[str] = set()  # task runs queued already
        self.queue: deque[tuple[RunRecord, TaskRunRecord | None, int, bool]] = deque()
        # Task runs whose state changed since the last look (the record itself: no object is made per event),
        # reported only while ``reporting`` (many calls under way at once, a big Task.map); otherwise the
        # calls under way are polled.
        self.changed: deque[TaskRunRecord] = deque()
        self.reporting = False
        self.wake = threading.Event()
        self.awake = False  # wake is set (a plain flag: Event.is_set() is a call per event)
        self.sender: threading.Thread | None = None

    def receive_change(self, task_run: TaskRunRecord) -> None:
        """A later state of a task run (delivered only while ``reporting``)."""
        if task_run.id in self.seen:
            self.changed.append(task_run)

    def receive(self, event: events.Event) -> None:
        """A run's event, or the first event of a task run."""
        task_run = event.task_run
        if task_run is not None:
            if task_run.id in self.seen:
                return  # queued already
            self.seen.add(task_run.id)
        run = event.run
        # The attempt and finality now, in the engine's thread: they place the task run on its node.
        self.queue.append((run, task_run, run.attempts, run.end_time is not None))
        if event.kind == "run" and run.id in self.roots and event.state.is_final():
            # A run just ended: show its final graph now, in the thread (and cell) that ran it.
            self.graph.flush(final=True)
            return
        if not self.awake:
            self.awake = True
            self.wake.set()
        if self.sender is None:
            self.graph._start_sender()


def _earlier_runs_of(model: GraphModel, node_id: str) -> list[TaskRunRecord]:
    """Task runs of the same task from the run history, to explain a miss when this session has no earlier
    run of it (read on a click only)."""
    node = model.calls.get(node_id)
    if node is None:
        return []
    last = node.last
    if last.cache_hit and last.cache_key is not None:
        # A hit: the run that computed its key (what it saved) is usually an earlier session's.
        if last.cache_key in model._computed:
            return []
    elif any(n.task_key == node.task_key and n.id != node.id for n in model.calls.values()):
        return []
    from nbflow.runs import history

    try:
        # Not the task runs of the runs this graph has (a live session's may be millions of rows).
        runs = history().list_runs(20, headers_only=set(model.runs))
    except Exception:
        return []
    return [t for run in runs if run.id not in model.runs for t in run.task_runs if t.task_key == node.task_key]


class _Dispatcher:
    """One engine subscription for all graphs: events go to the inboxes of the graphs of their run in O(1),
    however many graphs a long session has shown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[str, tuple[_Inbox, ...]] = {}
        self._everything: tuple[_Inbox, ...] = ()
        self._unsubscribe: Any = None
        self._registered: set[_Inbox] = set()
        self._reporting: set[_Inbox] = set()  # inboxes that asked for state changes (report_changes)
        self._unsubscribe_changes: Any = None

    def register(self, graph: TaskGraph) -> None:
        inbox = graph._inbox
        with self._lock:
            self._registered.add(inbox)
            if graph.session:
                if inbox not in self._everything:
                    self._everything = (*self._everything, inbox)
            else:
                for run_id in graph.model.runs:
                    targets = self._by_run.get(run_id, ())
                    if inbox not in targets:
                        self._by_run[run_id] = (*targets, inbox)
            if self._unsubscribe is None:
                # Runs' events and each task run's first one: a graph follows the records it was given.
                self._unsubscribe = events.subscribe(self.deliver, state_changes=False)

    def unregister(self, graph: TaskGraph) -> None:
        inbox = graph._inbox
        with self._lock:
            self._registered.discard(inbox)
        self.report_changes(inbox, False)
        with self._lock:
            self._everything = tuple(i for i in self._everything if i is not inbox)
            for run_id in [run_id for run_id, inboxes in self._by_run.items() if inbox in inboxes]:
                rest = tuple(i for i in self._by_run[run_id] if i is not inbox)
                if rest:
                    self._by_run[run_id] = rest
                else:
                    del self._by_run[run_id]

    def deliver(self, event: events.Event) -> None:
        """The engine's subscriber (a bound method: cheaper to call than an instance's ``__call__``)."""
        run = event.run
        targets = self._by_run.get(run.id)
        if targets is not None:
            for inbox in targets:
                inbox.receive(event)
            if event.kind == "run" and run.parent_run_id is None and event.state.is_final():
                self._forget_finished(run)
        elif event.kind == "run" and run.parent_run_id is not None:
            parents = self._by_run.get(run.parent_run_id)
            if parents is not None:  # a subflow of a shown flow: shown in the same graph
                with self._lock:
                    self._by_run[run.id] = parents
                for inbox in parents:
                    inbox.receive(event)
        if self._everything and run.pid == os.getpid():
            for inbox in self._everything:
                inbox.receive(event)

    def report_changes(self, inbox: _Inbox, on: bool) -> None:
        """Deliver (or stop delivering) every later state change of the task runs ``inbox`` has seen; the
        engine's events are subscribed to only while some inbox wants them. A graph that was closed or
        stopped listening meanwhile gets none (so that no subscription outlives it)."""
        with self._lock:
            on = on and inbox in self._registered and not inbox.graph._closed
            inbox.reporting = on
            if on:
                self._reporting.add(inbox)
            else:
                self._reporting.discard(inbox)
            if self._reporting and self._unsubscribe_changes is None:
                self._unsubscribe_changes = events.subscribe(self.deliver_change)
            elif not self._reporting and self._unsubscribe_changes is not None:
                self._unsubscribe_changes()
                self._unsubscribe_changes = None

    def deliver_change(self, event: events.Event) -> None:
        """The engine's subscriber for every event, while some inbox reports changes."""
        task_run = event.task_run
        if task_run is None:
            return
        run = event.run
        for inbox in self._by_run.get(run.id, ()):
            if inbox.reporting:
                inbox.receive_change(task_run)
        if self._everything and run.pid == os.getpid():
            for inbox in self._everything:
                if inbox.reporting:
                    inbox.receive_change(task_run)

    def _forget_finished(self, run: RunRecord) -> None:
        """A run that completed has nothing left to retry: its graphs stop listening (a Retry click
        registers them again)."""
        if run.state_type != "COMPLETED":
            return
        for inbox in self._by_run.get(run.id, ()):
            if run.id in inbox.roots:
                self.unregister(inbox.graph)


_dispatcher = _Dispatcher()


def session_graph() -> TaskGraph:
    """A live graph of everything this process ran: its session run (task calls outside flows) and every
    flow run. ``%nbflow graph`` shows this. It keeps the newest calls (about :data:`SESSION_CALLS`, and the
    newest flow runs that fit beside them), so it does not grow without end in a long session; the run
    history has them all."""
    from nbflow.engine import runtime
    from nbflow.runs import history

    live = runtime._session
    if live is not None and live.pid != os.getpid():
        live = None
    # The live session run's records are in memory (its newest ones), and of the other runs only the newest
    # that fit beside them are read: the history has every call of a long session.
    recorded = history()
    headers = [run for run in recorded.list_runs(200, pid=os.getpid(), task_runs=False)
               if live is None or run.id != live.id]
    budget = SESSION_CALLS - (len(live.task_runs) if live is not None else 0)
    earlier = {run.id: run for run in _newest_runs(headers, budget, lambda run: run.task_run_count)}
    for task_run in sorted(recorded.find_task_runs(list(earlier)), key=lambda task_run: task_run.seq):
        earlier[task_run.run_id].task_runs.append(task_run)
    mine = sorted([*earlier.values(), *([live] if live is not None else [])], key=lambda run: run.start_time)
    return TaskGraph(mine, session=True)


def _newest_runs(runs: Sequence[RunRecord], budget: int, size: Callable[[RunRecord], int]) -> list[RunRecord]:
    """The newest of ``runs``, whole, whose calls (``size``) fit in ``budget`` together; a subflow only with
    its parent."""
    chosen: list[RunRecord] = []
    for run in sorted(runs, key=lambda run: run.start_time, reverse=True):
        if size(run) > budget:
            break
        chosen.append(run)
        budget -= size(run)
    kept = {run.id for run in chosen}
    return [run for run in chosen if run.parent_run_id is None or run.parent_run_id in kept]


def plain_summary(graph: GraphPayload) -> str:
    """One line for text-only front-ends: the runs shown and the task calls by state."""
    counts: dict[str, int] = {}
    for node in graph["nodes"]:
        for state, count in (node.get("counts") or {node["state"]: 1}).items():
            counts[state] = counts.get(state, 0) + count
    runs = ", ".join(f"{run['name']} ({run['state']})" for run in graph["runs"] if run.get("parent") is None)
    states = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return f"<task graph: {runs or 'no runs yet'}; {states or 'no task calls'}>"
