"""Communication graphs for gossip learning and their mixing matrices.

This module owns *who talks to whom* in serverless training: the neighbour sets of a ring, a 2-D torus, an
exponential graph and a random k-regular graph, and the Metropolis-Hastings mixing matrix over any of them.
Everything here is pure (no network); every worker builds the same graph from the same arguments, so the
whole graph, not only its own row, is known locally (the mixing weight of an edge needs both degrees).

Mixing weights (Metropolis-Hastings, Xiao and Boyd 2004, "Fast linear iterations for distributed averaging";
Boyd et al. 2006, "Randomized gossip algorithms")::

    W[i, j] = 1 / (1 + max(deg(i), deg(j)))     for each edge {i, j}
    W[i, i] = 1 - sum_{j != i} W[i, j]

W is symmetric with rows summing to one, hence doubly stochastic, so repeated mixing preserves the average
of the workers' vectors and, on a connected graph, drives every worker to that average.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Topology",
    "exponential_graph",
    "metropolis_hastings",
    "random_regular_graph",
    "ring_graph",
    "topology_graph",
    "torus_graph",
    "torus_shape",
]

logger = logging.getLogger(__name__)

Topology = Literal["ring", "torus", "exponential", "random_regular"]
Graph = list[set[int]]
"""Undirected graph as one neighbour set per node (no self loops)."""


def _empty(num_nodes: int) -> Graph:
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    return [set() for _ in range(num_nodes)]


def _connect(graph: Graph, a: int, b: int) -> None:
    if a != b:
        graph[a].add(b)
        graph[b].add(a)


def ring_graph(num_nodes: int) -> Graph:
    """Each node talks to the next and the previous one (one neighbour at n = 2, none at n = 1)."""
    graph = _empty(num_nodes)
    for node in range(num_nodes):
        _connect(graph, node, (node + 1) % num_nodes)
    return graph


def torus_shape(num_nodes: int) -> tuple[int, int]:
    """(rows, columns) of the most square 2-D torus on ``num_nodes`` nodes, both >= 2.

    The same rule as the ``gossip.topology`` config check; ``ValueError`` for a prime or too small count.
    """
    side = int(round(num_nodes**0.5))
    rows = next((r for r in range(side, 1, -1) if num_nodes % r == 0 and num_nodes // r >= 2), 0)
    if rows < 2:
        raise ValueError(f"a 2-D torus needs a composite node count, got {num_nodes}")
    return rows, num_nodes // rows


def torus_graph(num_nodes: int) -> Graph:
    """Nodes on a rows x columns grid with wrap-around; each talks to its 4 grid neighbours."""
    rows, cols = torus_shape(num_nodes)
    graph = _empty(num_nodes)
    for node in range(num_nodes):
        row, col = divmod(node, cols)
        _connect(graph, node, row * cols + (col + 1) % cols)
        _connect(graph, node, ((row + 1) % rows) * cols + col)
    return graph


def exponential_graph(num_nodes: int) -> Graph:
    """Node i talks to i +- 2^k (mod n) for every 2^k < n (Assran et al. 2019, "Stochastic Gradient Push").

    The original exponential graph is directed (out-edges to i + 2^k); the undirected version used here has
    a symmetric Metropolis-Hastings matrix and O(log n) neighbours per node.
    """
    graph = _empty(num_nodes)
    hop = 1
    while hop < num_nodes:
        for node in range(num_nodes):
            _connect(graph, node, (node + hop) % num_nodes)
        hop *= 2
    return graph


def random_regular_graph(num_nodes: int, degree: int, seed: int) -> Graph:
    """A random ``degree``-regular graph, identical on every worker that passes the same ``seed``.

    It is the circulant graph (i talks to i +- 1 .. i +- degree/2, plus the opposite node i + n/2 when the
    degree is odd) under a uniformly random relabelling of the nodes. This is not uniform over all regular
    graphs, but every node meets fresh peers each round, as in the per-round peer sampling of MoDeST (de Vos
    et al. 2023, arXiv 2302.13837), and it exists for every valid (n, k) without rejection sampling.
    """
    if not 1 <= degree < num_nodes or (degree * num_nodes) % 2:
        raise ValueError(f"degree must be in 1..{num_nodes - 1} with degree x nodes even, got {degree}")
    graph = _empty(num_nodes)
    labels = np.random.default_rng(seed).permutation(num_nodes)
    for node in range(num_nodes):
        for hop in range(1, degree // 2 + 1):
            _connect(graph, int(labels[node]), int(labels[(node + hop) % num_nodes]))
        if degree % 2:
            _connect(graph, int(labels[node]), int(labels[(node + num_nodes // 2) % num_nodes]))
    return graph


def topology_graph(topology: Topology, num_nodes: int, *, degree: int = 2, seed: int = 0) -> Graph:
    """The graph named by ``gossip.topology`` (``seed`` only matters for ``random_regular``)."""
    if topology == "ring":
        return ring_graph(num_nodes)
    if topology == "torus":
        return torus_graph(num_nodes)
    if topology == "exponential":
        return exponential_graph(num_nodes)
    if topology == "random_regular":
        return random_regular_graph(num_nodes, degree, seed)
    raise ValueError(f"topology = {topology!r}: allowed: 'ring', 'torus', 'exponential', 'random_regular'")


def metropolis_hastings(graph: Graph) -> NDArray[np.float64]:
    """The Metropolis-Hastings mixing matrix of ``graph`` (see the module docstring): doubly stochastic."""
    num_nodes = len(graph)
    weights = np.zeros((num_nodes, num_nodes))
    for node, neighbours in enumerate(graph):
        for other in neighbours:
            weights[node, other] = 1.0 / (1 + max(len(neighbours), len(graph[other])))
        weights[node, node] = 1.0 - weights[node].sum()
    return weights
