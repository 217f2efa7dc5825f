"""Start a run's workers on this machine: as processes (``farsync train``) or as threads (tests, quick
benchmarks), all on loopback gloo, with a progress bar and the run's output files.

The launcher hosts the run's TCPStore; workers connect to it, build their groups on prefixes of it and
publish their final results to it. Worker records reach the launcher through a queue (processes) or a
list (threads), and the launcher alone writes ``metrics.jsonl``.

Before anything starts or is written, :mod:`farsync.launch.preflight` checks the run. A resumed run touches
its directory only once it has started: ``config.toml`` (the previous one kept as ``config.previous.toml``)
and ``metrics.jsonl`` are written when every worker has loaded its checkpoint, so a resume that fails to
start leaves the directory as it was. Worker processes die with the launcher (:mod:`farsync.train.lifetime`):
a SIGTERM, SIGHUP or Ctrl-C stops them (one line each), and a SIGKILLed launcher takes them with it.

A checkpoint that cannot be written (a full disk) stops the run with one line: a worker process reports its
:class:`~farsync.train.checkpoint.CheckpointWriteError` as a ``checkpoint_failed`` message on the records
queue and exits with ``EXIT_CHECKPOINT_WRITE`` instead of printing a traceback, and the launcher raises the
first such error (threads raise it directly). Other worker errors keep their tracebacks.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NoReturn

from tqdm import tqdm

from farsync.comm.groups import open_store
from farsync.config import RunConfig, config_to_toml, load_config
from farsync.launch.dispatch import run_worker
from farsync.launch.preflight import check_resume, check_run, clear_run_dir
from farsync.report.loggers import run_loggers
from farsync.report.summary import write_run_outputs
from farsync.train import WorkerContext, read_results
from farsync.train.checkpoint import EXIT_CHECKPOINT_WRITE, CheckpointWriteError
from farsync.train.lifetime import become_worker_process, ignoring_interrupts, stop_processes

__all__ = ["WorkerFailed", "launch", "run_threads"]

logger = logging.getLogger(__name__)

_CHECKPOINT_FAILED = "checkpoint_failed"
"""Kind of the queue message a worker process sends instead of a traceback; never written to the metrics."""


def _process_entry(
    config_toml: str,
    rank: int,
    world_size: int,
    port: int,
    out_dir: str | None,
    records: Any,
    resume: bool,
    prefix: str,
    parent: int,
) -> None:
    import tempfile

    become_worker_process(parent)
    logging.basicConfig(level=logging.WARNING, format=f"[worker {rank}] %(levelname)s %(message)s")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(config_toml)
    config = load_config(handle.name)
    Path(handle.name).unlink()
    store = open_store("127.0.0.1", port, world_size, is_master=False)
    ctx = WorkerContext(
        rank,
        world_size,
        store,
        Path(out_dir) if out_dir else None,
        records.put,
        resume=resume,
        group_prefix=prefix,
    )
    try:
        run_worker(config, ctx)
    except CheckpointWriteError as error:
        records.put({"kind": _CHECKPOINT_FAILED, "worker": rank, "message": str(error)})
        sys.exit(EXIT_CHECKPOINT_WRITE)  # the launcher prints the message once, for every worker


class _Progress:
    """A tqdm bar over worker 0's inner steps: round, loss, tokens/s and bytes sent."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True, file=sys.stderr)
        self.begin = time.perf_counter()
        self.round = 0
        self.enabled = enabled

    def update(self, record: dict[str, Any]) -> None:
        if record.get("worker") != 0:
            return
        if record["kind"] == "round":
            self.round = record["round"]
        elif record["kind"] == "step":
            self.bar.n = record["step"]
            rate = record["tokens"] / max(time.perf_counter() - self.begin, 1e-9)
            self.bar.set_postfix(
                round=self.round,
                loss=f"{record['loss']:.3f}",
                tok_s=f"{rate:.0f}",
                sent=f"{record['bytes_sent'] / 1e6:.1f}MB",
                refresh=False,
            )
            self.bar.refresh()
        elif record["kind"] == "eval" and self.enabled:  # tqdm.write prints even when the bar is disabled
            self.bar.write(
                f"step {record['step']:>5}  eval loss {record['eval_loss']:.4f}"
                + (f"  acc {record['eval_accuracy']:.3f}" if "eval_accuracy" in record else "")
            )

    def close(self) -> None:
        self.bar.close()


class WorkerFailed(RuntimeError):
    """A worker process exited with an error (its own output says why)."""


class _RunFiles:
    """``config.toml`` and ``metrics.jsonl`` of the run directory.

    A new run writes both at once. A resumed run holds its records back until every worker has reported
    its ``resume`` record (it loaded its checkpoint), then keeps the previous ``config.toml`` as
    ``config.previous.toml``, writes its own and appends the records to ``metrics.jsonl``.
    """

    def __init__(self, config: RunConfig, out_dir: Path, *, resume: bool, bar: _Progress) -> None:
        self.config, self.out_dir, self.bar = config, out_dir, bar
        self.pending: list[dict[str, Any]] = []
        self.resumed: set[Any] = set()
        self.file: Any = None
        self.loggers = run_loggers(config, out_dir)  # TensorBoard / W&B beside metrics.jsonl ([logging])
        if not resume:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.toml").write_text(config_to_toml(config))
            self.file = open(out_dir / "metrics.jsonl", "w")  # noqa: SIM115 - closed in close()

    def on_record(self, record: dict[str, Any]) -> None:
        self.bar.update(record)
        if self.file is None:
            self.pending.append(record)
            if record.get("kind") == "resume":
                self.resumed.add(record.get("worker"))
                if len(self.resumed) == self.config.num_workers:
                    self.start()
            return
        self._write(record)

    def start(self) -> None:
        """The resumed run has started: its config and the records held back go to the directory."""
        if self.file is not None:
            return
        path, text = self.out_dir / "config.toml", config_to_toml(self.config)
        if path.is_file() and path.read_text() != text:
            os.replace(path, self.out_dir / "config.previous.toml")
        temp = path.with_name("config.toml.tmp")
        temp.write_text(text)
        os.replace(temp, path)
        self.file = open(self.out_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        for record in self.pending:
            self._write(record)
        self.pending.clear()

    def _write(self, record: dict[str, Any]) -> None:
        # Appended as they arrive, so an interrupted run keeps its metrics up to the crash.
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.loggers.log(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.loggers.close()


def launch(
    config: RunConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    mode: Literal["processes", "threads"] = "processes",
) -> dict[str, Any]:
    """Runs ``config.num_workers`` workers to the end; writes the run directory; returns the summary.

    Raises :class:`~farsync.config.ConfigError` before anything starts or is written when the run cannot work
    (:mod:`farsync.launch.preflight`); ``resume`` continues the run in ``out_dir`` from its newest usable
    checkpoint (resharded when ``num_workers`` changed); ``overwrite`` clears ``out_dir`` once the checks
    have passed. Whether a new run may use a non-empty ``out_dir`` is the caller's decision.
    """
    check_run(config)
    if resume:
        plan = check_resume(config, out_dir)
        if plan.resharded:
            print(f"farsync: {plan.describe()}", file=sys.stderr, flush=True)
    elif overwrite:
        clear_run_dir(out_dir)
    n = config.num_workers
    store = open_store("127.0.0.1", 0, n + 1, is_master=True)
    prefix = f"run{int(time.time() * 1000)}"
    bar = _Progress(config.train.num_steps, progress)
    files = _RunFiles(config, out_dir, resume=resume, bar=bar)
    try:
        if mode == "threads":
            run_threads(config, n, store, out_dir, prefix, resume, files.on_record)
        else:
            _run_processes(config, n, store.port, out_dir, prefix, resume, files.on_record)
        files.start()  # a run whose workers never report a resume (nothing to resume) has started too
    finally:
        bar.close()
        files.close()
    results = read_results(store, prefix, n)
    records = _deduplicated(out_dir / "metrics.jsonl") if resume else None
    return write_run_outputs(config, out_dir, results, records)


def _deduplicated(path: Path) -> list[dict[str, Any]]:
    """A resumed run re-emits the steps after its checkpoint: keep the last record of each (kind, worker,
    step, round), in the order of those last occurrences."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last: dict[tuple[Any, ...], int] = {}
    for index, record in enumerate(records):
        if record.get("kind") == "resume":
            key: tuple[Any, ...] = ("resume", index)
        else:
            key = (record.get("kind"), record.get("worker"), record.get("step"), record.get("round"))
        last[key] = index
    return [records[i] for i in sorted(last.values())]


def run_threads(
    config: RunConfig,
    n: int,
    store: Any,
    out_dir: Path | None,
    prefix: str,
    resume: bool,
    on_record: Any = None,
) -> list[dict[str, Any]]:
    """All workers as threads of this process (fast; used by tests and benchmarks)."""
    collected: list[dict[str, Any]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def sink(record: dict[str, Any]) -> None:
        with lock:
            collected.append(record)
            if on_record is not None:
                on_record(record)

    def target(rank: int) -> None:
        try:
            worker_store = open_store("127.0.0.1", store.port, n + 1, is_master=False)
            run_worker(
                config,
                WorkerContext(rank, n, worker_store, out_dir, sink, resume=resume, group_prefix=prefix),
            )
        except BaseException as error:  # noqa: BLE001 - re-raised below
            if not isinstance(error, CheckpointWriteError):  # its one line is the launcher's to print
                logger.error("worker %d failed: %r", rank, error)
            errors.append(error)

    threads = [threading.Thread(target=target, args=(rank,), daemon=True) for rank in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        unwritten = [e for e in errors if isinstance(e, CheckpointWriteError)]
        if unwritten:  # the cause; a peer's own error (a collective cut short) is logged above
            raise unwritten[0]
        raise RuntimeError(f"{len(errors)} worker(s) failed; first: {errors[0]!r}") from errors[0]
    return collected


def _run_processes(
    config: RunConfig, n: int, port: int, out_dir: Path, prefix: str, resume: bool, on_record: Any
) -> list[dict[str, Any]]:
    context = mp.get_context("spawn")
    records_queue = context.Queue()
    config_toml = config_to_toml(config)
    parent = os.getpid()
    processes = [
        context.Process(
            target=_process_entry,
            args=(config_toml, rank, n, port, str(out_dir), records_queue, resume, prefix, parent),
            daemon=True,
        )
        for rank in range(n)
    ]
    try:
        with ignoring_interrupts():
            for process in processes:
                process.start()
        return _collect(processes, records_queue, on_record)
    except BaseException as error:
        stopped = stop_processes(processes)
        if isinstance(error, KeyboardInterrupt):
            for rank, process in enumerate(processes):
                if process.pid in stopped:
                    print(f"farsync: worker {rank} (pid {process.pid}) stopped", file=sys.stderr, flush=True)
        raise


def _collect(processes: list[Any], records_queue: Any, on_record: Any) -> list[dict[str, Any]]:
    """Passes the workers' records on until every worker has exited; raises if one failed."""
    collected: list[dict[str, Any]] = []
    failures: list[str] = []

    def take(record: dict[str, Any]) -> None:
        if record.get("kind") == _CHECKPOINT_FAILED:
            failures.append(str(record.get("message", "checkpoint: write failed")))
            return
        collected.append(record)
        on_record(record)

    while True:
        try:
            record = records_queue.get(timeout=0.2)
        except queue.Empty:
            if all(not p.is_alive() for p in processes):
                break
            if any(p.exitcode not in (None, 0) for p in processes):
                _raise_failed(processes, records_queue, take, failures)
            continue
        take(record)
    while not records_queue.empty():
        take(records_queue.get())
    if any(p.exitcode != 0 for p in processes):
        _raise_failed(processes, records_queue, take, failures)
    return collected


def _raise_failed(
    processes: list[Any], records_queue: Any, take: Callable[[dict[str, Any]], None], failures: list[str]
) -> NoReturn:
    """A worker exited with an error: its checkpoint message if it sent one, else the exit codes."""
    while not records_queue.empty():  # a failing worker's message can trail its exit code
        take(records_queue.get())
    if failures:
        raise CheckpointWriteError(failures[0]) from None
    raise WorkerFailed(f"worker process(es) failed: exit codes {[p.exitcode for p in processes]}") from None
