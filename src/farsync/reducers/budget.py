"""Talking to an adaptive reducer: its time budget for the next synchronisation, and what it chose.

Adaptive compressed reducers (DiLoCoX) expose a settable ``time_budget_s``: the seconds the next
synchronisation may take on the link without making compute wait. They also report per-round choices
(rank, bits) through ``metrics()``. Reducers are layered (robust over compressed, privacy over robust), so
both helpers look through a chain of wrappers that keep the wrapped reducer in ``inner``. A reducer with
neither attribute (the fp32 :class:`~farsync.reducers.base.MeanReducer`) is left alone. The same walk tells an
algorithm whether some reducer of the chain stands in for the outer momentum (SparseLoCo).
"""

from __future__ import annotations

from typing import Any

from farsync.reducers.base import Reducer

__all__ = ["reducer_chain", "reducer_metrics", "replaces_outer_momentum", "set_time_budget"]

_MAX_DEPTH = 8


def reducer_chain(reducer: Reducer) -> list[Any]:
    """``reducer`` followed by the reducers it wraps (through ``inner``), outermost first."""
    chain: list[Any] = []
    node: Any = reducer
    while node is not None and len(chain) < _MAX_DEPTH and node not in chain:
        chain.append(node)
        node = getattr(node, "inner", None)
    return chain


def set_time_budget(reducer: Reducer, seconds: float) -> bool:
    """Sets ``time_budget_s`` on every reducer of the chain that has one; True if any had."""
    found = False
    for node in reducer_chain(reducer):
        if hasattr(node, "time_budget_s"):
            node.time_budget_s = float(seconds)
            found = True
    return found


def reducer_metrics(reducer: Reducer) -> dict[str, Any]:
    """The merged ``metrics()`` of the chain (outer reducers win on a name clash)."""
    merged: dict[str, Any] = {}
    for node in reversed(reducer_chain(reducer)):
        method = getattr(node, "metrics", None)
        if callable(method):
            values = method()
            if isinstance(values, dict):
                merged.update(values)
    return merged


def replaces_outer_momentum(reducer: Reducer) -> bool:
    """True when a reducer of the chain keeps an error-feedback buffer that stands in for the outer momentum
    (:attr:`~farsync.reducers.base.Reducer.replaces_outer_momentum`, SparseLoCo)."""
    return any(getattr(node, "replaces_outer_momentum", False) for node in reducer_chain(reducer))
