"""SparseLoCo's reducer: a decaying error-feedback buffer per worker, chunked top-k in 2 bits, all-gathered.

Sarfi et al. 2025, "Communication Efficient LLM Pre-training with SparseLoCo" (arXiv 2508.15706). With
``Delta_r`` worker r's pseudo-gradient of this round (``theta_global - theta_r``), per tensor::

    e_r      <- beta e_r + Delta_r                          (error feedback with decay; beta = 0.95)
    hat_r     = Q(TopK_chunks(e_r))                          (farsync.compress.sparseloco)
    e_r      <- e_r - hat_r                                  (what was sent leaves the buffer)
    Delta     = sum_r w_r hat_r / sum_r w_r                  (all-gather, decode and average locally)

and the outer step is ``theta <- theta - alpha Delta``: plain SGD, no outer momentum (the buffer stands in for
it), ``alpha = 1`` in the paper. That step is DiLoCo's outer optimizer with momentum 0: when a reducer of this
class is used, :meth:`farsync.config.AlgorithmConfig.with_outer_recipe` resolves an outer lr / momentum left to
the rule to plain SGD at :data:`farsync.config.SPARSE_OUTER_LR` (2; the paper uses 1, which ended +12% here) without momentum (:attr:`replaces_outer_momentum`); values the user sets are kept.

Every worker's message is all-gathered (top-k indices differ per worker, so nothing can be summed on the
way): a weight (float32) followed by each tensor's message in name order; the byte ledger charges the
all-gather at ``(M - 1)`` times the message, which is also what each worker receives. Every worker decodes
all M messages in rank order, so all get bitwise the same average.

``transform = "dct"`` (kind ``sparseloco_dct``) selects each chunk's top-k among its DCT-II coefficients, the
chunk transform of DeMo (Peng et al. 2024, arXiv 2411.19870); only that part of DeMo: DeMo also communicates
every inner step, keeps its momentum on the optimizer and applies the sign of the aggregate, none of which is
done here. The buffer stays in the parameter domain (the inverse transform of what was sent is subtracted).

Failure: a worker whose update holds NaN/Inf counts it as zero, sends with weight 0 and subtracts nothing from
its (decayed) buffer, since nothing it sent was applied. A peer message that cannot be decoded (see
:meth:`~farsync.compress.sparseloco.SparseLoCoCodec.decode`) leaves that peer out of the round with a warning
and counts in :attr:`SparseLoCoReducer.num_rejected`; the round goes on.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from farsync.comm.communicator import Communicator
from farsync.compress.codecs import as_bytes, from_bytes
from farsync.compress.sparseloco import SparseLoCoCodec, Transform
from farsync.reducers.base import Reducer
from farsync.reducers.compressed import left_out_if_not_finite

__all__ = ["SparseLoCoReducer"]

logger = logging.getLogger(__name__)

_WEIGHT_BYTES = 4


class SparseLoCoReducer(Reducer):
    """SparseLoCo's compressed average (module docstring); ``state_dict`` holds the error buffers."""

    replaces_outer_momentum = True

    def __init__(
        self,
        comm: Communicator,
        *,
        fraction: float,
        chunk_size: int = 64,
        error_decay: float = 0.95,
        transform: Transform = "none",
        inner: Reducer | None = None,
    ) -> None:
        super().__init__(comm)
        if not 0.0 <= error_decay <= 1.0:
            raise ValueError(f"error_decay={error_decay} must be in [0, 1]")
        self.codec = SparseLoCoCodec(fraction, chunk_size, transform)
        self.error_decay = error_decay
        self.inner = inner
        self.buffers: dict[str, torch.Tensor] = {}
        self.num_rejected = 0
        self._metrics: dict[str, Any] = {}

    def reduce(self, named: dict[str, torch.Tensor], weight: float = 1.0) -> dict[str, torch.Tensor]:
        sent_before = self.comm.ledger.bytes_sent(self.comm.channel)
        named, weight = left_out_if_not_finite(named, weight, self.comm.rank)
        messages = self._encode(named, weight)
        device = next(iter(named.values())).device if named else torch.device("cpu")
        weight_bytes = as_bytes(torch.tensor([weight], dtype=torch.float32, device=device))
        message = torch.cat([weight_bytes, *messages])
        gathered = self.comm.all_gather(message).wait()
        totals = {name: torch.zeros(t.shape, dtype=torch.float32, device=device) for name, t in named.items()}
        weight_sum = 0.0
        for sender, peer_message in enumerate(gathered):  # rank order, the same on every worker
            decoded = self._decode(peer_message, named, sender)
            if decoded is None:
                continue
            peer_weight, values = decoded
            weight_sum += peer_weight
            for name, value in values.items():
                totals[name] += peer_weight * value
        scale = 1.0 / weight_sum if weight_sum > 0 else 0.0
        self._metrics = {
            "compression_bits": 2,
            "compressed_bytes": message.numel(),
            "compression_bytes_sent": self.comm.ledger.bytes_sent(self.comm.channel) - sent_before,
            "compression_rejected": self.num_rejected,
        }
        return {name: totals[name] * scale for name in named}

    def _encode(self, named: dict[str, torch.Tensor], weight: float) -> list[torch.Tensor]:
        """Each tensor's message; updates the error buffers (``e <- beta e + Delta``, then ``e -= sent``)."""
        messages = []
        for name, update in named.items():
            buffer = self.buffers.get(name)
            value = update.detach().to(torch.float32, copy=True)
            if buffer is not None and buffer.shape == value.shape:
                value += self.error_decay * buffer.to(value.device)
            message, sent = self.codec.encode(value)
            # A left-out worker's message counts for nothing, so nothing leaves its buffer.
            self.buffers[name] = value - sent if weight > 0 else value
            messages.append(message)
        return messages

    def _decode(
        self, message: torch.Tensor, like: dict[str, torch.Tensor], sender: int
    ) -> tuple[float, dict[str, torch.Tensor]] | None:
        try:
            if message.numel() < _WEIGHT_BYTES:
                raise ValueError(f"message of {message.numel()} bytes has no weight")
            weight = float(from_bytes(message, 0, 1, torch.float32)[0])
            if not (weight >= 0.0 and weight < float("inf")):
                raise ValueError(f"weight {weight} is not a finite number >= 0")
            offset, values = _WEIGHT_BYTES, {}
            for name, tensor in like.items():
                size = self.codec.num_bytes(tensor.shape)
                values[name] = self.codec.decode(message[offset : offset + size], tensor.shape)
                offset += size
            if offset != message.numel():
                raise ValueError(f"message has {message.numel()} bytes, expected {offset}")
        except ValueError as error:
            self.num_rejected += 1
            logger.warning(
                "worker %d: sparseloco message from worker %d rejected: %s", self.comm.rank, sender, error
            )
            return None
        return weight, values

    def metrics(self) -> dict[str, Any]:
        """What the last reduce sent (empty before the first)."""
        return dict(self._metrics)

    def state_dict(self) -> dict[str, object]:
        return {"error_buffers": {name: b.detach().cpu().clone() for name, b in self.buffers.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        buffers = state.get("error_buffers", {})
        if isinstance(buffers, dict):
            self.buffers = {name: torch.as_tensor(b).to(torch.float32).clone() for name, b in buffers.items()}
