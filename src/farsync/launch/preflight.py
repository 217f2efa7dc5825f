"""Everything a launcher can check before a worker starts or a file is written.

Every launcher (``farsync train`` with local processes or threads, ``--elastic``, the torchrun entry,
``farsync worker`` and ``farsync coordinator``) calls these first, so a run that cannot work stops with one
:class:`~farsync.config.ConfigError` line and exit code 2 and leaves no trace:

* :func:`check_run` -- the data loads and splits into one shard per worker that holds a batch (or a training
  window), a plug-in attack imports and accepts its parameters, and a robust aggregation rule's parameters
  tolerate the configured number of Byzantine workers;
* :func:`check_new_run_dir` -- a new run goes to an empty or new directory (``--overwrite`` clears an old
  run's directory first, :func:`clear_run_dir`), so a run directory only ever holds one run;
* :func:`check_resume` -- the run directory has a usable checkpoint, the new settings can load it
  (:func:`farsync.train.reshard.resume_conflict`) and, with another worker count, the algorithm can be
  resharded; it returns the :class:`ResumePlan` the launcher reports;
* :func:`check_port` -- a port to serve on is free.

Byzantine bounds (a rule that cannot outvote the configured attackers): Krum and Multi-Krum need ``f`` at
least the number of Byzantine workers ``b`` (Blanchard et al. 2017, arXiv 1703.02757); the trimmed mean
drops ``floor(beta * n)`` values at each end and needs that to be at least ``b`` (Yin et al. 2018, arXiv
1803.01498); the median and CenteredClip need ``b < n / 2`` (their breakdown point; Karimireddy et al. 2021,
arXiv 2012.10333). The benchmarks that study rules past these bounds run workers directly, not through a
launcher.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from farsync.config import ConfigError, RunConfig, load_config
from farsync.train.checkpoint import find_checkpoint
from farsync.train.reshard import reset_on_reshard, reshard_refusal, resume_conflict
from farsync.train.task import check_task

__all__ = [
    "ResumePlan",
    "check_byzantine_bounds",
    "check_elastic_resume",
    "check_new_run_dir",
    "check_port",
    "check_resume",
    "check_run",
    "clear_run_dir",
]

logger = logging.getLogger(__name__)

_RUN_MARKERS = ("metrics.jsonl", "summary.json", "checkpoints")
"""Beside ``config.toml``, what marks a directory as a farsync run's (and so safe for ``--overwrite``)."""


def check_run(config: RunConfig) -> None:
    """Data, shard sizes, plug-in attack and Byzantine bounds; raises :class:`ConfigError`."""
    ranks_per_replica = config.parallel.num_stages * config.parallel.num_shards
    check_task(
        config.data,
        batch_size=config.train.batch_size,
        # pipeline stages and FSDP shards of a replica share its data shard
        num_workers=config.num_workers // ranks_per_replica,
        seed=config.seed,
        model=config.model,
    )
    _check_attack(config)
    check_byzantine_bounds(config)
    _check_loggers(config)


def _check_loggers(config: RunConfig) -> None:
    from farsync.report.loggers import LoggerError, check_logger_names

    try:
        check_logger_names(config.logging.backends)
    except LoggerError as error:
        raise ConfigError("logging.backends", config.logging.backends, str(error)) from None


def _check_attack(config: RunConfig) -> None:
    if not config.byzantine.workers:
        return
    from farsync.comm.communicator import Communicator
    from farsync.reducers.base import MeanReducer
    from farsync.sim.attacking import build_attacking_reducer

    comm = Communicator(None, 0, 1)
    try:
        build_attacking_reducer(config, comm, MeanReducer(comm))
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - a plug-in module may fail in any way while importing
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ConfigError(
            "byzantine.attack", config.byzantine.attack, f"{type(error).__name__}: {first_line}"
        ) from None


def check_byzantine_bounds(config: RunConfig) -> None:
    """Raises :class:`ConfigError` when the aggregation rule cannot tolerate ``byzantine.workers``."""
    count = len(set(config.byzantine.workers))
    if count == 0:
        return
    n, aggregation = config.num_workers, config.aggregation
    attackers = f"{count} Byzantine worker{'s' if count > 1 else ''} of {n}"
    tolerated = aggregation.f if aggregation.f >= 0 else (n - 3) // 2  # f = -1: as many as Krum allows
    if aggregation.rule in ("krum", "multi_krum") and tolerated < count:
        possible = (
            "" if n > 2 * count + 2 else f", and num_workers > 2f + 2 = {2 * count + 2}, so more workers"
        )
        raise ConfigError(
            "aggregation.f",
            aggregation.f,
            f"Krum must tolerate the {attackers}: needs f >= {count}{possible}",
        )
    if aggregation.rule == "trimmed_mean":
        trimmed = min(math.floor(aggregation.beta * n + 1e-9), (n - 1) // 2)
        if trimmed < count:
            raise ConfigError(
                "aggregation.beta",
                aggregation.beta,
                f"the trimmed mean drops floor(beta x {n}) = {trimmed} values at each end, fewer than the "
                f"{attackers}; needs beta >= {count / n:g} (and {count} < {n}/2)",
            )
    if aggregation.rule in ("median", "centered_clip", "robust") and 2 * count >= n:
        raise ConfigError(
            "byzantine.workers",
            config.byzantine.workers,
            f"{aggregation.rule} tolerates fewer than half the workers; {attackers} is too many",
        )


def check_new_run_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuses a new run's directory that already holds something (``--overwrite``: unless it is a run's)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError("--out", str(out_dir), "exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ConfigError(
            "--out",
            str(out_dir),
            "directory is not empty; continue the run there with --resume DIR, or pass --overwrite to clear it "
            "and start a new run",
        )
    here = Path.cwd().resolve()
    target = out_dir.resolve()
    if target == here or target in here.parents:
        raise ConfigError(
            "--overwrite", str(out_dir), "refusing to clear the current directory or a parent of it"
        )
    if not (out_dir / "config.toml").is_file() or not any((out_dir / m).exists() for m in _RUN_MARKERS):
        raise ConfigError(
            "--overwrite",
            str(out_dir),
            "not a farsync run directory (config.toml with metrics.jsonl, summary.json or checkpoints/); "
            "refusing to clear it",
        )


def clear_run_dir(out_dir: Path) -> None:
    """Deletes everything in a run directory that :func:`check_new_run_dir` allowed to be overwritten."""
    if not out_dir.is_dir():
        return
    for entry in out_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    logger.info("cleared %s for a new run", out_dir)


@dataclass(frozen=True)
class ResumePlan:
    """What a resumed run will start from (checked before any worker starts)."""

    round: int
    """The checkpoint's outer round."""
    checkpoint_workers: int
    """How many workers wrote the checkpoint."""
    num_workers: int
    """How many workers the resumed run has."""
    reset: list[str] = field(default_factory=list)
    """Per-worker state started afresh (resharding only)."""

    @property
    def resharded(self) -> bool:
        return self.checkpoint_workers != self.num_workers

    def describe(self) -> str:
        """One line for the terminal."""
        if not self.resharded:
            return f"resuming from the checkpoint of round {self.round}"
        return (
            f"resuming from the checkpoint of round {self.round}, resharded from {self.checkpoint_workers} to "
            f"{self.num_workers} workers (global weights, outer optimizer, step and round carried over; reset: "
            f"{', '.join(self.reset)})"
        )


def check_resume(config: RunConfig, run_dir: Path) -> ResumePlan:
    """Checks that ``config`` can continue the run in ``run_dir``; reads only, writes nothing.

    The settings are compared with the run's ``config.toml`` when it has one (``farsync train --resume``
    insists on it; a library caller may hand over a directory of checkpoints alone).
    """
    config_path = run_dir / "config.toml"
    if config_path.is_file():
        try:
            checkpointed = load_config(config_path)
        except ConfigError as error:
            raise ConfigError("--resume", str(run_dir), f"its config.toml does not load ({error})") from None
        conflict = resume_conflict(checkpointed, config)
        if conflict is not None:
            raise conflict
    if config.algorithm.name == "fedavg" and config.federated.num_clients > 0:
        raise ConfigError(
            "--resume",
            str(run_dir),
            "federated runs with clients (federated.num_clients > 0) cannot resume yet",
        )
    found = find_checkpoint(run_dir)
    if found is None:
        raise ConfigError(
            "--resume",
            str(run_dir),
            f"no usable checkpoint under {run_dir / 'checkpoints'}; start a new run there with --out DIR "
            "--overwrite",
        )
    _check_shapes(config, found.directory, run_dir)
    if found.num_workers != config.num_workers:
        refusal = reshard_refusal(config)
        if refusal is not None:
            raise ConfigError(
                "num_workers",
                config.num_workers,
                f"cannot reshard the {found.num_workers}-worker checkpoint of round {found.round}: {refusal}; "
                f"resume with num_workers = {found.num_workers}",
            )
        return ResumePlan(found.round, found.num_workers, config.num_workers, reset_on_reshard(config))
    return ResumePlan(found.round, found.num_workers, config.num_workers)


def _check_shapes(config: RunConfig, directory: Path, run_dir: Path) -> None:
    """The checkpoint's GPT weights have the shapes ``config`` builds (catches a config.toml edited by hand)."""
    if config.model.kind != "gpt" or config.parallel.num_stages > 1:
        return
    import torch

    from farsync.train.task import build_model

    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in build_model(config.model).state_dict().items()}
    state = torch.load(directory / "worker_0.pt", map_location="cpu", weights_only=False, mmap=True)
    saved = {name: tuple(t.shape) for name, t in state.get("model", {}).items()}
    for name, shape in expected.items():
        if saved.get(name) != shape:
            raise ConfigError(
                "--resume",
                str(run_dir),
                f"the checkpoint's {name} has shape {saved.get(name)}, this config builds {shape}: the model "
                "settings differ from the ones the checkpoint was written with",
            )


def check_elastic_resume(config: RunConfig, run_dir: Path) -> None:
    """Checks that ``config`` can continue the elastic run in ``run_dir`` (any worker count: elastic runs
    heal joiners from the global state)."""
    from farsync.train.checkpoint import find_latest

    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ConfigError("--resume", str(run_dir), "expected a run directory containing config.toml")
    conflict = resume_conflict(load_config(config_path), config)
    if conflict is not None:
        raise conflict
    if find_latest(run_dir / "elastic", 1) is None:
        raise ConfigError(
            "--resume",
            str(run_dir),
            f"no usable elastic checkpoint under {run_dir / 'elastic' / 'checkpoints'}",
        )


def check_port(host: str, port: int, key: str = "--port") -> None:
    """Raises :class:`ConfigError` when ``host:port`` cannot be served on (in use, or not this host's)."""
    if not 0 <= port < 65536:
        raise ConfigError(key, port, "expected a port number in 0..65535 (0 picks a free one)")
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        if os.name == "posix":  # as the store does: a port in TIME_WAIT is free to serve on
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(key, port, f"{host}:{port} is already in use; pick another port") from None
            raise ConfigError(key, port, f"cannot serve on {host}:{port}: {error.strerror}") from None
