"""Reducers: how the workers' updates are combined into one.

A :class:`Reducer` takes a list of tensors and returns their combination across the group: the fp32 mean
(:mod:`~farsync.reducers.base`), compressed on the wire (:mod:`~farsync.reducers.compressed`, adaptive
low-rank), robust to Byzantine workers (:mod:`~farsync.reducers.robust`, with update validation) or
differentially private (:mod:`~farsync.reducers.private`). Wrappers compose; all reach the network only
through a :class:`~farsync.comm.Communicator` and the collectives built on it.
"""

from farsync.reducers.base import MeanReducer, Reducer, flatten, unflatten

__all__ = ["MeanReducer", "Reducer", "flatten", "unflatten"]
