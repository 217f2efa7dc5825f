"""An elastic run's summary.json: the ``farsync train`` contract, written by the final quorum's source worker.

Two ``farsync worker`` joins (as threads, against a coordinator in a thread) and a plain ``farsync train`` of
the same configuration (threads). Without faults the elastic run trains exactly what the plain run trains,
so every field of the plain summary that does not measure time must be equal.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tiny_runs import TINY_GPT

from farsync.comm.groups import open_store
from farsync.config import load_config
from farsync.elastic.coordinator import Coordinator
from farsync.elastic.summary import ELASTIC_FIGURES
from farsync.elastic.worker import join
from farsync.launch.local import launch

OVERRIDES = [
    "num_workers=2",
    *TINY_GPT,
    "train.num_steps=10",
    "train.eval_every=1000",
    "algorithm.num_inner_steps=5",
    "network.emulation=off",
    "checkpoint.every_rounds=0",
    "elastic.min_workers=2",  # both workers form the first quorum: the run is the plain run's
    "elastic.heartbeat_interval_s=0.2",
    "elastic.failure_timeout_s=5.0",
    "elastic.collective_timeout_s=20.0",
]
TIMING = {"wall_s", "compute_s", "comm_wait_s", "compute_utilization"}


def test_elastic_workers_write_the_train_summary_contract_with_the_plain_runs_values(tmp_path: Path) -> None:
    # Prepare
    config = load_config(None, OVERRIDES)
    store = open_store("127.0.0.1", 0, 1, is_master=True)
    coordinator = Coordinator(store, token=None, min_workers=2)
    coordinator_thread = coordinator.start_thread()
    exit_codes: dict[int, int] = {}

    def worker(index: int) -> None:
        exit_codes[index] = join(config, f"127.0.0.1:{store.port}", out_dir=tmp_path / "elastic")

    # Execute
    threads = [threading.Thread(target=worker, args=(index,), daemon=True) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    coordinator.stop()
    coordinator_thread.join(timeout=5)
    plain = launch(config, tmp_path / "plain", mode="threads", progress=False)

    # Assert: the workers wrote the run's summary (no launcher here), with every key of a plain run's
    # summary plus exactly the elastic figures
    assert exit_codes == {0: 0, 1: 0}
    elastic = json.loads((tmp_path / "elastic" / "summary.json").read_text())
    assert set(elastic) - set(plain) == set(ELASTIC_FIGURES)
    assert set(plain) <= set(elastic)
    # ... and the plain run's values wherever they do not measure time
    assert {key: elastic[key] for key in plain if key not in TIMING} == {
        key: value for key, value in plain.items() if key not in TIMING
    }
    assert elastic["num_workers"] == 2 and elastic["num_rounds"] == 2 and elastic["num_steps"] == 10
    assert elastic["num_finished_workers"] == 2 and elastic["global_params_equal"]
    assert elastic["rounds_lost_by_survivors"] == 0 and elastic["healing_s"] == []
    records = [json.loads(line) for line in (tmp_path / "elastic" / "metrics.jsonl").read_text().splitlines()]
    assert {r["worker"] for r in records if r["kind"] == "step"} == {0, 1}
