"""The attacking reducer applies a plug-in attack loaded by name, with the colluders' honest updates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from farsync.comm.communicator import Communicator
from farsync.config import load_config
from farsync.reducers.base import MeanReducer
from farsync.sim.attacking import build_attacking_reducer
from farsync.sim.ranks import run_ranks

WORLD = 4
BYZANTINE = [1, 3]


def update(rank: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 2), float(rank)), "b": torch.tensor([float(rank)])}


def test_plugin_attack_loads_by_name_and_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import plugin_robust_attack

    plugin_robust_attack.CALLS.clear()
    config = load_config(
        None,
        [
            f"num_workers={WORLD}",
            f"byzantine.workers={BYZANTINE}",
            'byzantine.attack="plugin_robust_attack:make_colluding_shift"',
            "byzantine.scale=10.0",
        ],
    )

    def body(rank: int, world: int, group: Any, store: Any) -> Any:
        comm = Communicator(group, rank, world)
        reducer = build_attacking_reducer(config, comm, MeanReducer(comm))
        result = reducer(update(rank))
        return result["w"][0, 0].item(), comm.ledger.bytes_sent(), reducer.simulation_ledger.bytes_sent()

    # Execute
    results = run_ranks(body, WORLD, prefix="plugin")
    # Assert: byzantine ranks sent mean(1, 3) + 10 = 12 each; the mean is (0 + 12 + 2 + 12) / 4.
    for value, real_bytes, simulated_bytes in results:
        assert value == pytest.approx(6.5)
        assert simulated_bytes > 0  # the collusion gather is charged apart from real traffic
        assert real_bytes == 2 * (WORLD - 1) * 4 * 6 // WORLD
    calls = sorted((c["worker"], c["num_colluders"]) for c in plugin_robust_attack.CALLS)
    assert calls == [(1, 2), (3, 2)]


def test_stale_and_sign_flip_through_the_reducer() -> None:
    config = load_config(None, [f"num_workers={WORLD}", "byzantine.workers=[0]", "byzantine.scale=3.0"])

    def body(rank: int, world: int, group: Any, store: Any) -> Any:
        comm = Communicator(group, rank, world)
        reducer = build_attacking_reducer(config, comm, MeanReducer(comm))
        return reducer(update(rank + 1))["b"].item()

    # sign flip x3 on rank 0 (update 1): (-3 + 2 + 3 + 4) / 4
    assert run_ranks(body, WORLD, prefix="flip") == [pytest.approx(1.5)] * WORLD


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["byzantine.workers=[0, 1]", "byzantine.attack=alie"], "byzantine.workers"),
        (["byzantine.workers=[0]", 'byzantine.attack="no_such_module:make"'], "byzantine.attack"),
    ],
)
def test_bad_attack_settings_name_the_key(overrides: list[str], key: str) -> None:
    from farsync.config import ConfigError

    config = load_config(None, ["num_workers=2", *overrides])
    comm = Communicator(None, 0, 1)
    with pytest.raises(ConfigError) as raised:
        build_attacking_reducer(config, comm, MeanReducer(comm))
    assert raised.value.key == key


def test_label_flip_worker_trains_on_flipped_labels() -> None:
    from farsync.config import DataConfig, ModelConfig
    from farsync.data import ArrayBatches
    from farsync.train.task import build_task

    def labels(flip: bool) -> torch.Tensor:
        task = build_task(
            ModelConfig(kind="mlp", width=8),
            DataConfig(kind="digits"),
            batch_size=4,
            num_eval_batches=1,
            rank=1,
            num_workers=4,
            seed=0,
            flip_labels=flip,
        )
        assert isinstance(task.batches, ArrayBatches)
        return task.batches.y

    assert torch.equal(labels(True), 9 - labels(False))
