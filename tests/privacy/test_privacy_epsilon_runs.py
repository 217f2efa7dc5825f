"""Safety net (issue 10, item 8g): the epsilon a private run reports, value by value, against Opacus's own RDP
functions (``compute_rdp`` / ``get_privacy_spent``) at the sampling rate the run should use.

* federated, central noise: m = C N of N clients sampled per round, so every round is a subsampled Gaussian
  mechanism with q = m / N (Opacus's Poisson bound, the usual approximation for fixed-size sampling);
* federated, local noise: no amplification claimed, q = 1 for each round the most-sampled client took part in;
* FedAvg over workers with the private reducer (every worker is one contributor every round): q = 1.

Broken on purpose to check these fail: the central sampling rate as 1 or as m / num_workers, and the
private reducer's rate as 1 / num_workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from safety_helpers import records

from farsync.config import load_config
from farsync.federated import clients_per_round, sample_clients
from farsync.launch.local import launch

NOISE, DELTA, NUM_ROUNDS = 1.3, 1e-5, 4
MLP = [
    "num_workers=2",
    "model.kind=mlp",
    "model.width=8",
    "data.kind=digits",
    "algorithm.name=fedavg",
    "train.lr=0.1",
    "train.eval_every=1000",
    "network.emulation=off",
    "checkpoint.every_rounds=0",
    f"privacy.noise_multiplier={NOISE}",
    f"privacy.delta={DELTA}",
]
FEDERATED = [
    "federated.num_clients=10",
    "federated.client_fraction=0.3",
    f"federated.num_rounds={NUM_ROUNDS}",
    "federated.local_epochs=1",
    "federated.batch_size=50",
    "seed=5",
]


def _opacus_epsilon(sample_rate: float, num_steps: int) -> float:
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=sample_rate, noise_multiplier=NOISE, steps=num_steps, orders=orders)
    epsilon, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)
    return float(epsilon)


def _reported(tmp_path: Path, *overrides: str) -> list[float]:
    launch(load_config(None, [*MLP, *overrides]), tmp_path, mode="threads", progress=False)
    rounds = records(tmp_path, "round")
    assert all(r["privacy_delta"] == DELTA for r in rounds)
    return [float(r["privacy_epsilon"]) for r in rounds]


def test_central_federated_epsilon_uses_the_client_sampling_rate(tmp_path: Path) -> None:
    reported = _reported(tmp_path, *FEDERATED, "privacy.mode=central")
    rate = clients_per_round(10, 0.3) / 10
    expected = [_opacus_epsilon(rate, t) for t in range(1, NUM_ROUNDS + 1)]
    assert rate == 0.3 and len(reported) == NUM_ROUNDS
    assert reported == pytest.approx(expected, rel=1e-6)
    assert _opacus_epsilon(1.0, NUM_ROUNDS) > 1.5 * expected[-1]  # a wrong rate would show


def test_local_federated_epsilon_counts_the_most_sampled_clients_rounds(tmp_path: Path) -> None:
    reported = _reported(tmp_path, *FEDERATED, "privacy.mode=local")
    taken_part = np.zeros(10, dtype=int)
    expected = []
    for round_index in range(NUM_ROUNDS):
        taken_part[sample_clients(10, 0.3, round_index, seed=5)] += 1
        expected.append(_opacus_epsilon(1.0, int(taken_part.max())))
    assert reported == pytest.approx(expected, rel=1e-6)


def test_fedavg_over_private_workers_spends_one_full_round_per_sync(tmp_path: Path) -> None:
    reported = _reported(
        tmp_path,
        "train.num_steps=8",
        "algorithm.num_inner_steps=2",
        "train.batch_size=8",
        "privacy.mode=central",
    )
    expected = [_opacus_epsilon(1.0, t) for t in range(1, 5)]
    assert reported == pytest.approx(expected, rel=1e-6)
