"""The layered layout: deterministic, fewer crossings than the given order, fast on large graphs."""

from __future__ import annotations

import itertools
import random

import pytest

from nbflow.ui.layout import NODE_HEIGHT, NODE_WIDTH, count_crossings, layered_layout


def random_dag(n: int, seed: int, fan_in: int = 2, window: int = 30) -> tuple[list[str], list[tuple[str, str]]]:
    rng = random.Random(seed)
    nodes = [f"n{i}" for i in range(n)]
    edges = []
    for v in range(1, n):
        for _ in range(rng.randint(0, fan_in)):
            edges.append((nodes[rng.randrange(max(0, v - window), v)], nodes[v]))
    return nodes, edges


def naive_crossings(nodes: list[str], edges: list[tuple[str, str]]) -> int:
    """Crossings of the same layers drawn in the given order (no reordering), via the same counter."""
    import nbflow.ui.layout as layout

    saved = layout.SWEEPS
    layout.SWEEPS = 0
    try:
        return count_crossings(layered_layout(nodes, edges), edges)
    finally:
        layout.SWEEPS = saved


@pytest.mark.parametrize("seed", range(5))
def test_same_graph_same_coordinates(seed: int) -> None:
    nodes, edges = random_dag(300, seed)
    first = layered_layout(nodes, edges)
    second = layered_layout(list(nodes), list(edges))
    assert first.positions == second.positions
    assert first.edge_points == second.edge_points
    assert (first.width, first.height) == (second.width, second.height)


@pytest.mark.parametrize("seed", range(5))
def test_crossing_reduction_beats_the_given_order(seed: int) -> None:
    nodes, edges = random_dag(200, seed)
    # Shuffle the order nodes are given in (keeping it topological within layers is not needed).
    rng = random.Random(seed)
    shuffled = nodes[:]
    rng.shuffle(shuffled)
    reduced = count_crossings(layered_layout(shuffled, edges), edges)
    assert reduced < naive_crossings(shuffled, edges)


def test_two_swapped_chains_untangle_to_zero_crossings() -> None:
    nodes = ["a1", "b1", "b2", "a2", "a3", "b3"]
    edges = [("a1", "a2"), ("a2", "a3"), ("b1", "b2"), ("b2", "b3")]
    layout = layered_layout(nodes, edges)
    assert layout.crossings == 0 and count_crossings(layout, edges) == 0


def test_layers_are_longest_paths_and_nodes_do_not_overlap() -> None:
    nodes = ["load", "clean", "features", "train", "report"]
    edges = [("load", "clean"), ("clean", "features"), ("features", "train"), ("load", "train"), ("train", "report")]
    layout = layered_layout(nodes, edges)
    assert layout.layers == {"load": 0, "clean": 1, "features": 2, "train": 3, "report": 4}
    # The long edge load -> train bends through dummy points in the layers between.
    long_edge = layout.edge_points[3]
    assert len(long_edge) == 4
    boxes = sorted(layout.positions.values())
    for (x1, y1), (x2, y2) in itertools.pairwise(boxes):
        assert x1 != x2 or abs(y1 - y2) >= NODE_HEIGHT
    assert layout.width >= 5 * NODE_WIDTH


def test_bad_edges_and_cycles_do_not_break_it() -> None:
    layout = layered_layout(["a", "b", "c"], [("a", "b"), ("b", "a"), ("a", "a"), ("x", "c"), ("a", "b")])
    assert set(layout.positions) == {"a", "b", "c"}
    assert len(layout.edge_points) == 5


def test_a_thousand_nodes_are_all_placed_apart() -> None:
    # How long it takes is a benchmark (benchmarks/bench_widget.py), not a unit test.
    nodes, edges = random_dag(1000, 7)
    layout = layered_layout(nodes, edges)
    assert set(layout.positions) == set(nodes)
    assert len(set(layout.positions.values())) == 1000
