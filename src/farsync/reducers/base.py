"""Reducers: turn every worker's named update into the group's (weighted) average.

An algorithm decides *when* to synchronise and *what* to send; a reducer decides *how* the average is
formed on the wire. The default :class:`MeanReducer` sends fp32 in one flat ring all-reduce. Compressed,
quantized, low-rank and Byzantine-robust reducers implement the same :meth:`Reducer.reduce`, and
cross-cutting concerns (privacy noise, attack simulation) wrap a reducer.

Weights: each worker passes its weight (1 for DiLoCo, its sample count for FedAvg, 0 to leave itself out
of this round, e.g. after a non-finite pseudo-gradient). The result is ``sum_i w_i u_i / sum_i w_i``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import torch

from farsync.comm.communicator import Communicator

__all__ = ["MeanReducer", "Reducer", "flatten", "unflatten"]

logger = logging.getLogger(__name__)


def flatten(named: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenates the tensors of ``named`` (in insertion order) into one fp32 vector."""
    return torch.cat([t.detach().reshape(-1).float() for t in named.values()])


def unflatten(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Splits ``vector`` back into tensors shaped like ``like``."""
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, tensor in like.items():
        out[name] = vector[offset : offset + tensor.numel()].view(tensor.shape)
        offset += tensor.numel()
    return out


class Reducer(ABC):
    """Averages named updates across the communicator's group. Blocking; algorithms overlap it in a thread."""

    replaces_outer_momentum: bool = False
    """True when the reducer keeps a per-worker error-feedback buffer that stands in for the outer momentum
    (SparseLoCo): the outer recipe then defaults to plain SGD without momentum (``AlgorithmConfig.with_outer_recipe``)."""

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm

    def __call__(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Runs :meth:`reduce` and records the bytes of this one synchronisation as a candidate peak."""
        before = self.comm.ledger.bytes_sent(self.comm.channel)
        result = self.reduce(named, weight)
        self.comm.ledger.record_sync_peak(self.comm.ledger.bytes_sent(self.comm.channel) - before)
        return result

    @abstractmethod
    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Returns the weighted mean of every worker's ``named`` (fp32, same names and shapes)."""

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        del state


class MeanReducer(Reducer):
    """fp32 ring all-reduce of the flattened update, with the weight riding along as one extra element.

    If every worker passed weight 0 the round has no usable update and the result is all zeros.
    """

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        vector = flatten(named)
        packed = torch.cat([vector * weight, vector.new_tensor([weight])])
        total = self.comm.all_reduce(packed, op="sum").wait()
        weight_sum = float(total[-1])
        mean = total[:-1] / weight_sum if weight_sum > 0 else torch.zeros_like(vector)
        return unflatten(mean, named)
