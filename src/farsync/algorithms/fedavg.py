"""Federated averaging (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", arXiv 1602.05629).

Each worker trains locally for a round, then the new global model is the average of the local models,
weighted by the number of samples each worker trained on. Written as an outer step this is DiLoCo's update
with plain SGD, learning rate 1 and no momentum: theta_global - 1 * sum_i w_i (theta_global - theta_i) /
sum_i w_i = sum_i w_i theta_i / sum_i w_i.

With ``federated.num_clients > 0`` a run has many clients per worker, sampled per round; that loop lives in
:mod:`farsync.federated.driver` (the worker dispatches to it), because it trains clients in turn instead of
hooking one optimizer. This class is the one-client-per-worker form that hooks the user's optimizer.

Privacy: with ``privacy.mode`` set, the reducer is a :class:`~farsync.reducers.private.PrivateReducer`
(clipping, noise, uniform client weights) and :meth:`FedAvg.metrics` reports the epsilon spent each round.

Failure: as DiLoCo (a non-finite local model is left out of the round with weight 0).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from farsync.algorithms.diloco import DiLoCo, OuterState
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig
from farsync.reducers.base import Reducer

__all__ = ["FedAvg"]


class FedAvg(DiLoCo):
    """Sample-weighted model averaging every round (outer SGD, lr 1, no momentum)."""

    name: ClassVar[str] = "fedavg"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        comm: Communicator,
        config: AlgorithmConfig | None = None,
        *,
        reducer: Reducer | None = None,
        num_samples: int = 1,
    ) -> None:
        super().__init__(model, optimizer, comm, config, reducer=reducer)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.weight = float(num_samples)

    def _make_outer_state(self) -> OuterState:
        return OuterState(self.named_params, self.config, lr=1.0, momentum=0.0)

    def metrics(self) -> dict[str, Any]:
        """``privacy_epsilon`` (at ``privacy_delta``) spent so far when the reducer is private."""
        from farsync.reducers.private import find_private_reducer

        private = find_private_reducer(self.reducer)
        if private is None:
            return {}
        return {"privacy_epsilon": private.epsilon(), "privacy_delta": private.privacy.delta}

    def final_metrics(self) -> dict[str, Any]:
        """The privacy spent over the whole run (empty without privacy), for the summary."""
        return self.metrics()
