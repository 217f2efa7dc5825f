"""The coordinator restarts between two boundaries: workers reconnect, join again and the run goes on."""

from __future__ import annotations

import gc
import threading
from typing import Any

import torch
from torch import nn

from farsync.algorithms.diloco import OuterState
from farsync.comm.communicator import Communicator
from farsync.comm.groups import open_store
from farsync.config import load_config
from farsync.elastic.client import CoordinatorClient
from farsync.elastic.coordinator import Coordinator
from farsync.elastic.quorum import Decision
from farsync.elastic.reducer import ElasticReducer
from farsync.reducers.base import MeanReducer


class Target:
    """Global state of one parameter; every worker holds the same, so nobody is ever healed."""

    def __init__(self, config: Any) -> None:
        self.rounds = 0
        self._outer = OuterState(
            {"w": nn.Parameter(torch.zeros(4))}, config.algorithm.with_outer_recipe(config.num_workers)
        )

    @property
    def outer(self) -> OuterState:
        return self._outer

    def arrival_state(self, pending: bool) -> dict[str, Any]:
        return {"round": self.rounds, "step": 5 * self.rounds + 5, "sha": f"after-{self.rounds}"}

    def on_healed(self, decision: Decision, pending: bool) -> None:
        raise AssertionError("nobody needs healing here")


def _start(port: int) -> tuple[Coordinator, threading.Thread]:
    coordinator = Coordinator(
        open_store("127.0.0.1", port, 1, is_master=True), token=b"restart-test-token", min_workers=2
    )
    return coordinator, coordinator.start_thread()


def test_workers_survive_a_coordinator_restart() -> None:
    config = load_config(
        None, ["num_workers=2", "network.emulation='off'", "elastic.collective_timeout_s=10.0"]
    )
    first, first_thread = _start(0)
    port = first.store.port
    at_boundary = threading.Barrier(3)
    restarted = threading.Event()
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            client = CoordinatorClient(
                "127.0.0.1",
                port,
                token=b"restart-test-token",
                slot=slot,
                config_sha="cfg",
                num_slots=2,
                elastic={"failure_timeout_s": 5.0},
                say=lambda line: None,
            )
            client.register(client.store)
            client.start_heartbeat(0.2)
            reducer = ElasticReducer(
                Communicator(None, 0, 1),
                client=client,
                config=config,
                build_inner=MeanReducer,
                sink=lambda record: None,
            )
            reducer.target = Target(config)
            first_round = reducer({"w": torch.full((4,), float(slot))}, 1.0)
            reducer.target.rounds += 1
            epoch = client.epoch
            at_boundary.wait()
            restarted.wait(30)
            second_round = reducer({"w": torch.full((4,), float(2 * slot))}, 1.0)
            results[slot] = (first_round["w"].clone(), second_round["w"].clone(), epoch, client.epoch)
            client.leave(finished=True)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in range(2)]
    for thread in threads:
        thread.start()
    at_boundary.wait(60)
    first.stop()
    first_thread.join(5)
    del first
    gc.collect()  # drops the store server: every worker connection breaks
    second, second_thread = _start(port)
    restarted.set()
    for thread in threads:
        thread.join(60)
    second.stop()
    second_thread.join(5)
    assert not errors, errors
    for slot in range(2):
        first_round, second_round, old_epoch, new_epoch = results[slot]
        assert torch.equal(first_round, torch.full((4,), 0.5))
        assert torch.equal(second_round, torch.full((4,), 1.0))
        assert old_epoch != new_epoch == second.epoch
