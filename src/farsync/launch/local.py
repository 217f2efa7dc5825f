"""Start a run's workers on this machine: as processes (``farsync train``) or as threads (tests, quick
benchmarks), all on loopback gloo, with a progress bar and the run's output files.

The launcher hosts the run's TCPStore; workers connect to it, build their groups on prefixes of it and
publish their final results to it. Worker records reach the launcher through a queue (processes) or a
list (threads), and the launcher alone writes ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from farsync.comm.groups import open_store
from farsync.config import RunConfig, config_to_toml, load_config
from farsync.launch.dispatch import run_worker
from farsync.report.summary import write_run_outputs
from farsync.train import WorkerContext, read_results
from farsync.train.task import check_task

__all__ = ["launch", "run_threads"]

logger = logging.getLogger(__name__)


def _process_entry(
    config_toml: str,
    rank: int,
    world_size: int,
    port: int,
    out_dir: str | None,
    records: Any,
    resume: bool,
    prefix: str,
) -> None:
    import tempfile

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
    run_worker(config, ctx)


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


def launch(
    config: RunConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    mode: Literal["processes", "threads"] = "processes",
) -> dict[str, Any]:
    """Runs ``config.num_workers`` workers to the end; writes the run directory; returns the summary."""
    # A batch larger than a worker's shard is a config error: raise it before anything is written.
    check_task(
        config.data, batch_size=config.train.batch_size, num_workers=config.num_workers, seed=config.seed
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(config_to_toml(config))
    n = config.num_workers
    store = open_store("127.0.0.1", 0, n + 1, is_master=True)
    prefix = f"run{int(time.time() * 1000)}"
    bar = _Progress(config.train.num_steps, progress)
    metrics_path = out_dir / "metrics.jsonl"
    # Records are appended as they arrive, so an interrupted run keeps its metrics up to the crash.
    with open(metrics_path, "a" if resume else "w") as metrics_file:

        def on_record(record: dict[str, Any]) -> None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            bar.update(record)

        try:
            if mode == "threads":
                run_threads(config, n, store, out_dir, prefix, resume, on_record)
            else:
                _run_processes(config, n, store.port, out_dir, prefix, resume, on_record)
        finally:
            bar.close()
    results = read_results(store, prefix, n)
    records = _deduplicated(metrics_path) if resume else None
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
            logger.error("worker %d failed: %r", rank, error)
            errors.append(error)

    threads = [threading.Thread(target=target, args=(rank,), daemon=True) for rank in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed; first: {errors[0]!r}") from errors[0]
    return collected


def _run_processes(
    config: RunConfig, n: int, port: int, out_dir: Path, prefix: str, resume: bool, on_record: Any
) -> list[dict[str, Any]]:
    context = mp.get_context("spawn")
    records_queue = context.Queue()
    config_toml = config_to_toml(config)
    processes = [
        context.Process(
            target=_process_entry,
            args=(config_toml, rank, n, port, str(out_dir), records_queue, resume, prefix),
            daemon=True,
        )
        for rank in range(n)
    ]
    for process in processes:
        process.start()
    collected: list[dict[str, Any]] = []
    while True:
        try:
            record = records_queue.get(timeout=0.2)
        except queue.Empty:
            if all(not p.is_alive() for p in processes):
                break
            failed = [p for p in processes if p.exitcode not in (None, 0)]
            if failed:
                for process in processes:
                    process.kill()
                raise RuntimeError(
                    f"worker process(es) failed: exit codes {[p.exitcode for p in processes]}"
                ) from None
            continue
        collected.append(record)
        on_record(record)
    while not records_queue.empty():
        record = records_queue.get()
        collected.append(record)
        on_record(record)
    bad = [p.exitcode for p in processes if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"worker process(es) failed: exit codes {[p.exitcode for p in processes]}")
    return collected
