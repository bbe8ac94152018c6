"""``%nbflow graph`` in auto mode: the notebook's cells as nodes, producer -> reader edges, stale cells marked —
in a real in-process IPython shell."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from nbflow.ui.cells import CellGraph, cells_changed
from nbflow.ui.widget import TaskGraph
from tests.ipython.conftest import shell as ipython_shell  # noqa: F401 (a fixture)
from tests.ui.conftest import browser_command


@pytest.fixture
def shell(ipython_shell: Any) -> Iterator[Any]:  # noqa: F811 (the imported fixture, with auto mode on)
    """The in-process IPython shell with nbflow loaded (tests/ipython/conftest.py) and auto mode on."""
    ipython_shell.run_line_magic("nbflow", "auto")
    yield ipython_shell  # unloading the extension afterwards turns auto mode off too


@pytest.fixture
def graphs() -> Iterator[list[Any]]:
    """The graphs a test opened, closed after it."""
    opened: list[Any] = []
    yield opened
    for graph in opened:
        graph.close()


def cell(ip: Any, cell_id: str, source: str) -> None:
    result = ip.run_cell(source, store_history=True, cell_id=cell_id)
    assert result.success, result.error_in_exec or result.error_before_exec


def show_graph(ip: Any, graphs: list[Any]) -> Any:
    graph = ip.run_line_magic("nbflow", "graph")
    graphs.append(graph)
    return graph


def nodes(graph: Any) -> dict[str, dict[str, Any]]:
    return {node["id"]: node for node in graph.graph["nodes"]}


def edges(graph: Any) -> set[tuple[str, str]]:
    return {(edge["source"], edge["target"]) for edge in graph.graph["edges"]}


def notebook(ip: Any) -> None:
    """Four cells: ``a`` is read by ``b`` and ``d``, ``b`` by ``d``; ``c`` reads nothing (and is not cached)."""
    cell(ip, "load", "a = 1")
    cell(ip, "double", "\n# twice a\nb = a * 2\n")
    cell(ip, "shell", "c = 'x'\n!true")
    cell(ip, "sum", "d = a + b\nd")


def test_nodes_are_the_cells_labelled_with_number_and_first_line(shell: Any, graphs: list[Any]) -> None:
    notebook(shell)
    graph = show_graph(shell, graphs)
    assert isinstance(graph, CellGraph)
    numbers = {record.key: record.number for record in shell._nbflow_session.auto.cells.values()}
    assert [(node["id"], node["label"]) for node in graph.graph["nodes"]] == [
        ("load", f"[{numbers['load']}] a = 1"),
        ("double", f"[{numbers['double']}] # twice a"),  # the first line that is not blank
        ("shell", f"[{numbers['shell']}] c = 'x'"),
        ("sum", f"[{numbers['sum']}] d = a + b"),
    ]
    assert len(set(numbers.values())) == 4
    states = {node_id: (node["state"], node["status"]) for node_id, node in nodes(graph).items()}
    assert states["load"][0] == "completed" and states["load"][1].startswith("computed")
    assert states["shell"] == ("uncached", "not cached")
    # Run again with the same code and inputs: restored from the cache, drawn as such.
    cell(shell, "double", "\n# twice a\nb = a * 2\n")
    double = nodes(show_graph(shell, graphs))["double"]
    assert double["state"] == "cached" and double["status"].startswith("cached")


def test_edges_go_from_the_producer_to_the_reader(shell: Any, graphs: list[Any]) -> None:
    notebook(shell)
    graph = show_graph(shell, graphs)
    assert edges(graph) == {("load", "double"), ("load", "sum"), ("double", "sum")}
    positions = {node_id: node["x"] for node_id, node in nodes(graph).items()}
    assert positions["load"] < positions["double"] < positions["sum"]  # producers left of their readers
    svg = graph._repr_mimebundle_()[0]["text/html"]
    drawn = set(re.findall(r'class="edge" data-source="([^"]+)" data-target="([^"]+)"', svg))
    assert drawn == edges(graph)


def test_a_cell_is_marked_stale_when_an_earlier_cell_changes_what_it_read(shell: Any, graphs: list[Any]) -> None:
    notebook(shell)
    before = show_graph(shell, graphs)
    assert not [node for node in before.graph["nodes"] if node["state"] == "stale"]
    cell(shell, "load", "a = 5")
    graph = show_graph(shell, graphs)
    number = shell._nbflow_session.auto.cells["load"].number
    shown = nodes(graph)
    assert {node_id for node_id, node in shown.items() if node["state"] == "stale"} == {"double", "sum"}
    assert shown["double"]["status"] == "stale · was computed"
    assert shown["load"]["state"] == "completed" and shown["shell"]["state"] == "uncached"
    # The details say why, and why a cell was not cached.
    browser_command(graph, {"type": "select", "id": "double"})
    details = graph.details
    assert details["state"] == "stale" and details["state_name"] == "Stale"
    assert details["stale"] == [f"`a` changed in cell [{number}]"]
    assert details["inputs"] == {"a": "1"}  # what it read when it ran
    browser_command(graph, {"type": "select", "id": "shell"})
    assert graph.details["stale"] == []
    assert graph.details["cache"] == "not cached: it runs a shell command (!)"
    assert repr(graph) == "<cell graph: 4 cells · 2 stale ([{}], [{}])>".format(
        *(shell._nbflow_session.auto.cells[key].number for key in ("double", "sum")))
    # Running the stale cell again unmarks it; the cell after it stays stale (b changed too).
    cell(shell, "double", "\n# twice a\nb = a * 2\n")
    again = nodes(show_graph(shell, graphs))
    assert again["double"]["state"] == "completed" and again["sum"]["state"] == "stale"


def test_the_static_svg_marks_stale_cells(shell: Any, graphs: list[Any]) -> None:
    notebook(shell)
    cell(shell, "load", "a = 5")
    html = show_graph(shell, graphs)._repr_mimebundle_()[0]["text/html"]
    page = ET.fromstring(html)
    drawn = {g.get("data-id"): g for g in page.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"}
    assert set(drawn) == {"load", "double", "shell", "sum"}
    for node_id, g in drawn.items():
        box = next(rect for rect in g.iter() if rect.get("class") == "box")
        badges = [b for b in g.iter() if b.get("class") == "stale-badge"]
        texts = ["".join(text.itertext()) for text in g.iter("{http://www.w3.org/2000/svg}text")]
        if node_id in ("double", "sum"):
            assert g.get("data-state") == "stale"
            # Not colour alone: a dotted, thicker border, a STALE badge and the word in its status line.
            assert (box.get("fill"), box.get("stroke")) == ("#fef3c7", "#b45309")
            assert box.get("stroke-dasharray") == "2 2" and box.get("stroke-width") == "2.5"
            assert len(badges) == 1 and "STALE" in texts and "stale · was computed" in texts
        else:
            assert g.get("data-state") != "stale" and not badges and "STALE" not in texts
            assert box.get("stroke-dasharray") != "2 2"
    # Where no widget runs, the stale cells and why are spelled out under the picture.
    listing = "".join(next(div for div in page.iter("div") if div.get("class") == "nbflow-stale-list").itertext())
    number = shell._nbflow_session.auto.cells["load"].number
    assert f"# twice a: `a` changed in cell [{number}]" in listing
    assert "d = a + b" in listing and "c = 'x'" not in listing


def test_outside_auto_mode_the_graph_is_the_session_graph(shell: Any, graphs: list[Any]) -> None:
    notebook(shell)
    shell.run_line_magic("nbflow", "auto off")
    graph = show_graph(shell, graphs)
    assert isinstance(graph, TaskGraph)
    shell.run_line_magic("nbflow", "auto")
    assert isinstance(show_graph(shell, graphs), CellGraph)


def test_cells_changed_redraws_the_open_cell_graphs_of_its_auto_mode(shell: Any, graphs: list[Any]) -> None:
    mode = shell._nbflow_session.auto
    cell(shell, "load", "a = 1")
    graph = show_graph(shell, graphs)
    closed = show_graph(shell, graphs)
    closed.close()
    rev = graph.graph["rev"]
    cell(shell, "double", "b = a * 2")
    cells_changed(mode)  # what auto mode calls once it has recorded a cell
    assert edges(graph) == {("load", "double")} and graph.graph["rev"] == rev + 1
    assert len(closed.graph["nodes"]) == 1  # a closed graph is left alone
    cells_changed(mode)  # nothing changed: nothing sent
    assert graph.graph["rev"] == rev + 1
    cell(shell, "load", "a = 2")
    cells_changed(mode)
    assert nodes(graph)["double"]["state"] == "stale"
    assert '"state":"stale"' in graph.graph_json  # what the browser draws
    cells_changed(object())  # another auto mode's cells: not this graph's
    assert graph.graph["rev"] == rev + 2


def test_running_a_cell_redraws_an_open_cell_graph(shell: Any, graphs: list[Any]) -> None:
    cell(shell, "load", "a = 1")
    graph = show_graph(shell, graphs)
    cell(shell, "double", "b = a * 2")
    assert edges(graph) == {("load", "double")}
    cell(shell, "load", "a = 2")
    assert nodes(graph)["double"]["state"] == "stale"
