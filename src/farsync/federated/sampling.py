"""Which clients take part in a round, where each client lives, and how their updates are weighted (pure).

Every worker draws the same sample from a generator seeded by (run seed, round), so no message is needed to
agree on it. Client ``c`` lives on worker ``c % num_workers``. Averaging follows McMahan et al. 2017: the
new global model is the sample-count-weighted mean of the sampled clients' models, formed here as
``sum_c n_c u_c / sum_c n_c`` over their updates ``u_c`` (equal to averaging the models themselves).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "clients_of_worker",
    "clients_per_round",
    "combine_partials",
    "sample_clients",
    "weighted_partial_sum",
]

_ROUND_STRIDE = 1_000_003


def clients_per_round(num_clients: int, client_fraction: float) -> int:
    """m = max(round(C N), 1): the number of clients sampled each round (at most N)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 0 < client_fraction <= 1:
        raise ValueError(f"client_fraction must be in (0, 1], got {client_fraction}")
    return min(num_clients, max(1, math.floor(client_fraction * num_clients + 0.5)))


def sample_clients(num_clients: int, client_fraction: float, round_index: int, seed: int) -> list[int]:
    """The sorted clients of round ``round_index``: m of N without replacement, the same on every worker."""
    rng = np.random.default_rng(seed * _ROUND_STRIDE + round_index)
    chosen = rng.choice(num_clients, size=clients_per_round(num_clients, client_fraction), replace=False)
    return sorted(int(c) for c in chosen)


def clients_of_worker(clients: list[int], rank: int, num_workers: int) -> list[int]:
    """The members of ``clients`` that live on worker ``rank`` (client c lives on worker c % num_workers)."""
    return [c for c in clients if c % num_workers == rank]


def weighted_partial_sum(
    updates: list[dict[str, torch.Tensor]], weights: list[float], like: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], float]:
    """One worker's share: (sum_c w_c u_c, sum_c w_c) over its clients; zeros and 0 when it has none."""
    total = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in like.items()}
    for update, weight in zip(updates, weights, strict=True):
        for name in total:
            total[name] += weight * update[name].float()
    return total, float(sum(weights))


def combine_partials(
    partials: list[tuple[dict[str, torch.Tensor], float]],
) -> dict[str, torch.Tensor]:
    """sum_workers (weighted sum) / sum_workers (weight sum): what the all-reduce computes (for tests)."""
    weight_sum = sum(w for _, w in partials)
    names = partials[0][0].keys()
    return {name: sum(p[name] for p, _ in partials) / weight_sum for name in names}  # type: ignore[misc]
