"""Mixing matrices: doubly stochastic, symmetric, supported on the graph; graph shapes; config errors."""

from __future__ import annotations

import numpy as np
import pytest

from farsync.algorithms.topology import (
    exponential_graph,
    metropolis_hastings,
    random_regular_graph,
    ring_graph,
    topology_graph,
    torus_graph,
    torus_shape,
)
from farsync.config import ConfigError, load_config

CASES = [
    ("ring", 2, 2),
    ("ring", 5, 2),
    ("ring", 16, 2),
    ("torus", 4, 2),
    ("torus", 6, 2),
    ("torus", 16, 2),
    ("exponential", 7, 2),
    ("exponential", 16, 2),
    ("random_regular", 8, 3),
    ("random_regular", 9, 4),
    ("random_regular", 6, 5),
]


@pytest.mark.parametrize(("topology", "num_nodes", "degree"), CASES)
def test_metropolis_hastings_is_doubly_stochastic(topology: str, num_nodes: int, degree: int) -> None:
    graph = topology_graph(topology, num_nodes, degree=degree, seed=3)  # type: ignore[arg-type]
    weights = metropolis_hastings(graph)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(weights, weights.T)
    assert (weights >= 0).all()
    off_graph = [(i, j) for i in range(num_nodes) for j in range(num_nodes) if i != j and j not in graph[i]]
    assert all(weights[i, j] == 0 for i, j in off_graph)


def test_ring_weights_by_hand() -> None:
    # Ring of 4: every degree is 2, so each edge weighs 1/3 and the diagonal keeps 1/3.
    weights = metropolis_hastings(ring_graph(4))
    expected = np.array([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]]) / 3
    np.testing.assert_allclose(weights, expected)


def test_graph_shapes() -> None:
    assert torus_shape(16) == (4, 4) and torus_shape(6) == (2, 3)
    assert all(len(n) == 4 for n in torus_graph(16))
    assert exponential_graph(8)[0] == {1, 2, 4, 7, 6}
    first, second = random_regular_graph(10, 3, seed=1), random_regular_graph(10, 3, seed=2)
    assert all(len(n) == 3 for n in first) and first != second
    assert random_regular_graph(10, 3, seed=1) == first


def test_bad_topologies_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="gossip.topology"):
        load_config(None, ["num_workers=7", "algorithm.name=gossip", "gossip.topology=torus"])
    with pytest.raises(ConfigError, match="gossip.degree"):
        load_config(None, ["num_workers=4", "gossip.topology=random_regular", "gossip.degree=4"])
    with pytest.raises(ConfigError, match="gossip.degree"):
        load_config(None, ["num_workers=5", "gossip.topology=random_regular", "gossip.degree=3"])
    with pytest.raises(ValueError, match="composite"):
        torus_shape(7)
