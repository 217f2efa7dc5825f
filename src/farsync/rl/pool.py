"""The pool of inference workers a run starts: threads or processes, and how they are stopped.

This module owns starting :func:`farsync.rl.worker.run_worker` for every configured worker and ending them:
threads share an in-process channel and weight store; processes (``spawn``, one torch thread each) talk
through the run directory (:mod:`farsync.rl.files`) and stop when ``stop`` appears there. A reward function
or prover given by the caller reaches a process as its start-up argument (the parent's own objects; they
must pickle, which is checked up front with a clear error). ``stop`` waits a
bounded time for each worker, then terminates a process that has not finished (and logs it).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import pickle
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from farsync.rl.files import DirectoryRolloutChannel, DirectoryWeights
from farsync.rl.proofs import Prover
from farsync.rl.tasks import RewardFn
from farsync.rl.transport import InProcessRolloutChannel, InProcessWeights, RolloutChannel
from farsync.rl.worker import WorkerReport, WorkerSettings, run_worker, worker_process

__all__ = ["WorkerPool"]

logger = logging.getLogger(__name__)


class WorkerPool:
    """Inference workers of one run (see the module doc); ``weights`` and ``channel`` are the trainer's ends."""

    def __init__(
        self,
        settings: list[WorkerSettings],
        run_dir: Path,
        *,
        backend: str,
        reward: RewardFn | None = None,
        prover: Prover | None = None,
    ) -> None:
        self.settings, self.run_dir, self.backend = settings, run_dir, backend
        self.reports: dict[str, WorkerReport] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._processes: list[Any] = []
        self.weights: InProcessWeights | DirectoryWeights
        self.channel: RolloutChannel
        if backend == "thread":
            self.weights, self.channel = InProcessWeights(), InProcessRolloutChannel()
        else:
            (run_dir / "stop").unlink(missing_ok=True)
            self.weights = DirectoryWeights(run_dir / "weights")
            self.channel = DirectoryRolloutChannel(run_dir / "rollouts")
            for name, value in (("reward callable", reward), ("prover", prover)):
                try:
                    pickle.dumps(value)
                except Exception:  # noqa: BLE001 - any pickling failure means the same thing here
                    raise ValueError(
                        f"a {name} for process workers must pickle (a module-level function or class "
                        "instance); use worker_backend = 'thread' for closures and lambdas"
                    ) from None
        self._reward, self._prover = reward, prover

    def start(self) -> None:
        """Starts every worker (after the first policy version has been published)."""
        for each in self.settings:
            if self.backend == "thread":
                thread = threading.Thread(
                    target=self._thread_main, args=(each,), daemon=True, name=each.worker_id
                )
                thread.start()
                self._threads.append(thread)
            else:
                context = multiprocessing.get_context("spawn")
                process = context.Process(
                    target=worker_process,
                    args=(asdict(each), str(self.run_dir), self._reward, self._prover),
                    daemon=True,
                    name=each.worker_id,
                )
                process.start()
                self._processes.append(process)

    def _thread_main(self, settings: WorkerSettings) -> None:
        assert isinstance(self.weights, InProcessWeights)
        try:
            self.reports[settings.worker_id] = run_worker(
                settings,
                self.weights,
                self.channel,
                self._stop.is_set,
                reward=self._reward,
                prover=self._prover,
            )
        except Exception:
            logger.exception("inference worker %s failed", settings.worker_id)

    def alive(self) -> int:
        """Workers still running."""
        threads = sum(t.is_alive() for t in self._threads)
        return threads + sum(bool(p.is_alive()) for p in self._processes)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Asks every worker to stop, waits up to ``timeout_s`` each, terminates processes that do not."""
        self._stop.set()
        (self.run_dir / "stop").touch()
        for thread in self._threads:
            thread.join(timeout_s)
        for process in self._processes:
            process.join(timeout_s)
            if process.is_alive():
                logger.warning(
                    "inference worker %s did not stop within %.0fs; terminated", process.name, timeout_s
                )
                process.terminate()
                process.join(5.0)
        for each in self.settings:
            path = self.run_dir / "workers" / f"{each.worker_id}.json"
            if path.is_file():
                self.reports[each.worker_id] = WorkerReport(**json.loads(path.read_text()))
