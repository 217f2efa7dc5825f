"""``farsync train --elastic``: a coordinator and one worker process per slot on this machine.

The launcher hosts the coordinator in a thread (its TCPStore on a free loopback port), writes a fresh token
to ``OUT/token`` (mode 0600; workers read it from there, as ``farsync worker --token-file`` would), and
starts each worker as a process running :func:`farsync.elastic.worker.join` with ``FARSYNC_WORKER_ID`` set
to its slot, logging to
``OUT/logs/worker<slot>.log``. An optional :class:`~farsync.sim.faults.FaultInjector` kills and restarts
workers. The final quorum's source worker writes ``summary.json`` with the ``farsync train`` contract and the
elastic figures (:mod:`farsync.elastic.summary`). When every worker has exited, the launcher merges their
records, the coordinator's quorum and failure events and the injector's log into ``metrics.jsonl`` and adds
its own figures to that summary (:data:`~farsync.elastic.summary.LAUNCHER_FIGURES`: quorum changes, worker
failures, refused joins, elapsed time, kills). If the source died after the run's last boundary, the
launcher writes the same summary from the ``result.worker<slot>.json`` files instead.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from farsync.comm.groups import host_store
from farsync.config import RunConfig, config_to_toml
from farsync.elastic.client import EXIT_COORDINATOR_LOST, INBOX, CoordinatorLost
from farsync.elastic.coordinator import Coordinator
from farsync.elastic.summary import ELASTIC_FIGURES, read_worker_records, result_queue, write_elastic_summary
from farsync.elastic.token import read_token, write_token
from farsync.elastic.worker import HOLD_ENV, check_elastic_config
from farsync.sim.faults import FaultInjector, FaultPlan
from farsync.sim.fuzz import Fuzzer, FuzzPlan, FuzzTargets
from farsync.train.lifetime import become_worker_process

__all__ = ["WorkerPool", "launch_elastic"]

logger = logging.getLogger(__name__)


def _worker_entry(
    config_path: str, address: str, token_file: str, out_dir: str, slot: int, log_path: str, hold: str
) -> None:
    """A worker process: output to its log file, its slot (and any hold point, see
    :data:`farsync.elastic.worker.HOLD_ENV`) in the environment, then ``farsync worker``."""
    # Objects inherited from the launcher are never collected here: a launcher that had gloo groups or store
    # connections in its garbage (a test process, a notebook) would otherwise run their C++ destructors in
    # this child, where the threads they join do not exist, and hang (seen: a worker stuck in a GC pass).
    gc.freeze()
    become_worker_process(os.getppid())  # dies with the launcher, even a SIGKILLed one
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own stdout
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ["FARSYNC_WORKER_ID"] = str(slot)
    if hold:
        os.environ[HOLD_ENV] = hold
    else:
        os.environ.pop(HOLD_ENV, None)
    logging.basicConfig(level=logging.WARNING, format=f"[worker {slot}] %(levelname)s %(name)s: %(message)s")
    from farsync.config import load_config
    from farsync.elastic.worker import join

    try:
        code = join(load_config(config_path), address, token_file=token_file, out_dir=Path(out_dir))
    except CoordinatorLost as error:
        print(f"farsync {error}", file=sys.stderr)
        code = EXIT_COORDINATOR_LOST
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _warm_up(config: RunConfig) -> None:
    """Runs one tiny inner and outer optimizer step here, so forked workers inherit torch's lazily imported
    machinery (the first ``optimizer.step()`` imports a lot) instead of each paying for it while their
    heartbeat thread starves."""
    import torch

    from farsync.train.task import build_model

    model = build_model(config.model) if config.model.kind == "gpt" else torch.nn.Linear(2, 2)
    inputs = torch.zeros(1, 2, dtype=torch.long) if config.model.kind == "gpt" else torch.zeros(1, 2)
    model(inputs).float().sum().backward()
    params = list(model.parameters())
    torch.optim.AdamW(params, lr=1e-6).step()
    torch.optim.SGD(params, lr=1e-6, momentum=0.9, nesterov=True).step()


class WorkerPool:
    """Worker processes by slot: start, SIGKILL, poll (the :class:`~farsync.sim.faults.Processes` interface).

    Workers are forked from the launcher, which has already imported torch and farsync, so a restart takes
    milliseconds instead of the seconds an interpreter start costs (as with DataLoader workers, each child
    sets its own intra-op thread count). Each is still a separate process with its own store connections and
    gloo groups, killed with a real SIGKILL.
    """

    def __init__(
        self,
        config: RunConfig,
        address: str,
        token_file: Path,
        out_dir: Path,
        holds: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        self.num_slots = config.num_workers
        # slot -> (round, step) where its first incarnation parks until the fault injector kills it.
        self.holds = dict(holds or {})
        self.args = (str(out_dir / "config.toml"), address, str(token_file), str(out_dir))
        self.log_dir = out_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.context = mp.get_context("fork")
        self.processes: dict[int, Any] = {}

    def slots(self) -> list[int]:
        return list(range(self.num_slots))

    def start(self, slot: int) -> None:
        log_path = str(self.log_dir / f"worker{slot}.log")
        hold = self.holds.pop(slot, None)  # the first incarnation only: a restarted worker runs on
        hold_text = f"{hold[0]},{hold[1]}" if hold is not None else ""
        process = self.context.Process(
            target=_worker_entry, args=(*self.args, slot, log_path, hold_text), daemon=True
        )
        process.start()
        self.processes[slot] = process

    def is_running(self, slot: int) -> bool:
        process = self.processes.get(slot)
        return process is not None and process.is_alive()

    def kill(self, slot: int) -> None:
        process = self.processes.get(slot)
        if process is not None and process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            process.join()

    def exit_codes(self) -> dict[int, int | None]:
        return {slot: p.exitcode for slot, p in self.processes.items()}

    def any_running(self) -> bool:
        return any(p.is_alive() for p in self.processes.values())

    def stop_all(self) -> None:
        for slot in list(self.processes):
            self.kill(slot)


def _hold_points(faults: FaultPlan | None) -> dict[int, tuple[int, int]]:
    """Each scheduled kill's worker parks at the kill's (round, step), so the SIGKILL lands where the plan
    says even when the tiny test models run a round faster than the heartbeat reports progress (without
    it, a loaded machine let workers run rounds past the point before the kill came)."""
    holds: dict[int, tuple[int, int]] = {}
    for kill in faults.kills if faults is not None else []:
        holds.setdefault(kill.worker, (kill.round, kill.step))
    return holds


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _prepare_dir(out_dir: Path) -> list[dict[str, Any]]:
    """Clears per-worker files of an earlier launch; returns the earlier records when resuming."""
    resuming = (out_dir / "elastic" / "checkpoints").is_dir()
    previous = _read_jsonl(out_dir / "metrics.jsonl") if resuming else []
    for pattern in ("result.worker*.json", "metrics.worker*.jsonl", "summary.json"):
        for path in out_dir.glob(pattern):
            path.unlink()
    return previous


def launch_elastic(
    config: RunConfig,
    out_dir: Path,
    progress: bool = True,
    *,
    faults: FaultPlan | None = None,
    fuzz: FuzzPlan | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Runs an elastic run on this machine to the end; returns the summary (also in ``summary.json``).

    ``fuzz`` sends a stranger's malformed and forged traffic during the run (:mod:`farsync.sim.fuzz`); the
    summary then carries ``fuzz`` (messages tried, by kind) next to ``rejected_messages``.
    """
    check_elastic_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _prepare_dir(out_dir)
    config_path = out_dir / "config.toml"
    config_path.write_text(config_to_toml(config))
    token_path = out_dir / "token"
    token = read_token(token_path) if token_path.is_file() else write_token(token_path)
    _warm_up(config)
    store = host_store("127.0.0.1", 0)
    coordinator = Coordinator(store, token=token, min_workers=config.elastic.min_workers)
    fuzzer = _start_fuzzer(coordinator, store.port, config.num_workers, fuzz) if fuzz is not None else None
    thread = coordinator.start_thread()
    pool = WorkerPool(config, f"127.0.0.1:{store.port}", token_path, out_dir, holds=_hold_points(faults))
    injector = FaultInjector(faults, pool) if faults is not None else None
    begin = time.monotonic()
    for slot in pool.slots():
        pool.start(slot)
    seen_events = 0
    try:
        while pool.any_running() or (
            injector is not None and injector.busy() and not coordinator.book.finished
        ):
            if injector is not None:
                injector.step(dict(coordinator.book.progress))
            events = coordinator.book.events[seen_events:]
            seen_events += len(events)
            if progress:
                for event in events:
                    print(f"elastic: {json.dumps(event)}", file=sys.stderr, flush=True)
            if time.monotonic() - begin > timeout_s:
                raise TimeoutError(
                    f"elastic run did not finish within {timeout_s:g}s (logs in {out_dir / 'logs'})"
                )
            time.sleep(0.05)
    finally:
        pool.stop_all()
        if fuzzer is not None:
            fuzzer.stop()
        coordinator_alive = thread.is_alive()
        coordinator.stop()
        thread.join(timeout=5)
    coordinator.drain()  # what a stranger sent last is counted too
    summary = _write_outputs(config, out_dir, coordinator, injector, previous, time.monotonic() - begin)
    if fuzzer is not None:
        summary.update(fuzz=fuzzer.report.as_dict(), coordinator_alive=coordinator_alive)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _start_fuzzer(coordinator: Coordinator, port: int, num_slots: int, plan: FuzzPlan) -> Fuzzer:
    """A stranger on the coordinator's port who sees every genuine request (an on-path observer)."""
    targets = FuzzTargets(
        inbox=INBOX,
        key_prefixes=("reply/", "coord/"),
        queues=tuple(result_queue(slot) for slot in range(num_slots)),
    )
    fuzzer = Fuzzer("127.0.0.1", port, targets, plan)
    coordinator.observers.append(fuzzer.capture)
    fuzzer.start()
    return fuzzer


def _source_summary(path: Path) -> dict[str, Any] | None:
    """The final quorum's source's summary, or None when it did not finish writing it (a source killed
    between writing the ``farsync train`` fields and adding the elastic ones leaves them out)."""
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if all(key in summary for key in ELASTIC_FIGURES) else None


def _write_outputs(
    config: RunConfig,
    out_dir: Path,
    coordinator: Coordinator,
    injector: FaultInjector | None,
    previous: list[dict[str, Any]],
    elapsed_s: float,
) -> dict[str, Any]:
    from farsync.report.plots import plot_run  # matplotlib: imported only when a run has finished

    worker_records = read_worker_records(out_dir)
    summary = _source_summary(out_dir / "summary.json")  # written by the final quorum's source
    if summary is None:
        results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("result.worker*.json"))]
        if not results:
            raise RuntimeError(f"no elastic worker finished; see the logs in {out_dir / 'logs'}")
        logger.warning("elastic: the final quorum's source wrote no summary; writing it from the results")
        summary = write_elastic_summary(config, out_dir, results, worker_records)
    records = [*previous, *worker_records]
    records.extend({**event, "source": "coordinator"} for event in coordinator.book.events)
    if injector is not None:
        records.extend({**entry, "source": "fault_injector"} for entry in injector.log)
    with open(out_dir / "metrics.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    plot_run(
        out_dir / "metrics.jsonl",
        out_dir / "report.png",
        title=f"{summary['algorithm']} x{summary['num_workers']}",
    )
    summary.update(coordinator.summary())
    summary["rejected_messages"] = summary.get("rejected_by_workers", 0) + summary["rejected_by_coordinator"]
    summary.update(
        elastic_elapsed_s=elapsed_s,
        num_kills=sum(1 for e in injector.log if e["kind"] == "kill") if injector is not None else 0,
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
