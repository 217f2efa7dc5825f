"""Experiment logging backends that run beside ``metrics.jsonl``: TensorBoard and Weights & Biases.

This module owns forwarding the training loop's metric records (the dicts written to ``metrics.jsonl``,
each with a ``"kind"`` such as ``"step"``, ``"round"`` or ``"eval"``, a ``"step"`` and usually a
``"worker"``) to experiment trackers. Every backend follows the :class:`MetricsLogger` protocol
(``log(record)``, ``close()``):

* :class:`TensorBoardLogger` - ``torch.utils.tensorboard.SummaryWriter`` event files; every numeric field
  becomes the scalar ``"<kind>/<field>"`` (e.g. ``"step/loss"``, ``"eval/eval_loss"``) at x = ``record["step"]``.
* :class:`WandbLogger` - a W&B run (``mode="offline"`` by default: files under ``dir``, nothing sent;
  ``wandb sync`` uploads them later). Same names, with ``"step"`` declared as the x-axis of every metric
  (``define_metric``), so a resumed run that logs an earlier step again is not dropped.
* :class:`MultiLogger` - several at once; :func:`make_loggers` builds one from a list of names.

Only worker 0's records are logged by default (``worker=None`` logs every worker, as
``"<kind>/<field>/worker<n>"`` for workers other than 0). The heavy libraries are imported only when their
logger is created; a missing one raises :class:`LoggerError` naming the extra to install
(``pip install farsync[tensorboard]`` or ``farsync[wandb]``).
References: https://pytorch.org/docs/stable/tensorboard.html and https://docs.wandb.ai/ref/python/init.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from farsync.config import RunConfig

__all__ = [
    "LOGGER_NAMES",
    "LoggerError",
    "MetricsLogger",
    "MultiLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "check_logger_names",
    "make_loggers",
    "record_scalars",
    "run_loggers",
]

logger = logging.getLogger(__name__)

LOGGER_NAMES: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""Logger names accepted by :func:`make_loggers`, each with the ``farsync`` extra that installs its library."""

_REQUIRED_MODULE = {"tensorboard": "tensorboard", "wandb": "wandb"}
_NOT_SCALARS = frozenset({"kind", "step", "worker"})
_WANDB_MODES = ("offline", "online", "disabled")


class LoggerError(ValueError):
    """An unknown logger name, a bad setting or a missing library; the message names the fix."""


@runtime_checkable
class MetricsLogger(Protocol):
    """Receives every metric record of a run, then ``close()`` once at the end."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Record one metrics dict (the same dict that goes to ``metrics.jsonl``)."""
        ...

    def close(self) -> None:
        """Flush and release the backend; no ``log`` follows."""
        ...


def _flatten(prefix: str, values: Mapping[str, Any], out: dict[str, float]) -> None:
    for key, value in values.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            _flatten(name, value, out)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)


def record_scalars(record: Mapping[str, Any], worker: int | None = 0) -> dict[str, float] | None:
    """The scalars of one record: ``{"<kind>/<field>": value}`` for its numeric fields, or ``None`` to skip.

    ``kind``, ``step`` and ``worker`` are not scalars; booleans, strings and lists are skipped; nested
    dicts become ``"<kind>/<field>/<subfield>"``. A record whose ``"worker"`` differs from ``worker`` is
    skipped (``None`` keeps all; workers other than 0 then get a ``"/worker<n>"`` suffix).
    """
    source = record.get("worker", 0)
    if worker is not None and source != worker:
        return None
    scalars: dict[str, float] = {}
    kind = str(record.get("kind", "metrics"))
    _flatten(kind, {key: value for key, value in record.items() if key not in _NOT_SCALARS}, scalars)
    if worker is None and source != 0:
        scalars = {f"{name}/worker{source}": value for name, value in scalars.items()}
    return scalars


def _record_step(record: Mapping[str, Any]) -> int | None:
    step = record.get("step")
    return int(step) if isinstance(step, int | float) and not isinstance(step, bool) else None


def _import(name: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise LoggerError(
            f"logger {name!r} needs the {_REQUIRED_MODULE[name]} package: pip install farsync[{LOGGER_NAMES[name]}]"
        ) from error


class TensorBoardLogger:
    """Writes each record's numeric fields as TensorBoard scalars ``"<kind>/<field>"`` at ``record["step"]``.

    Records without a numeric ``step`` are logged at the count of records seen so far.
    """

    def __init__(
        self, log_dir: str | os.PathLike[str], *, worker: int | None = 0, flush_secs: int = 30
    ) -> None:
        tensorboard: ModuleType = _import("tensorboard", "torch.utils.tensorboard")
        self.log_dir = Path(log_dir)
        """Directory of the event files."""
        self.worker = worker
        self._writer = tensorboard.SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)
        self._records = 0

    def log(self, record: Mapping[str, Any]) -> None:
        """Add the record's scalars to the event file."""
        scalars = record_scalars(record, self.worker)
        self._records += 1
        if not scalars:
            return
        step = _record_step(record)
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, global_step=self._records if step is None else step)

    def flush(self) -> None:
        """Write pending events to disk now."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


class WandbLogger:
    """Logs each record's numeric fields to a Weights & Biases run, against the ``step`` metric.

    ``mode="offline"`` (the default) writes the run under ``<dir>/wandb/offline-run-*`` and contacts no
    server; ``"online"`` needs ``wandb login`` (or ``WANDB_API_KEY``) and network access; ``"disabled"``
    makes every call a no-op. ``config`` (the run's configuration as a plain dict) is stored with the run.
    """

    def __init__(
        self,
        project: str,
        *,
        mode: str = "offline",
        dir: str | os.PathLike[str],
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        worker: int | None = 0,
    ) -> None:
        if mode not in _WANDB_MODES:
            raise LoggerError(f"unknown W&B mode {mode!r}; allowed: {', '.join(_WANDB_MODES)}")
        if not project:
            raise LoggerError("W&B needs a project name")
        wandb = _import("wandb", "wandb")
        self.dir = Path(dir)
        """Directory under which W&B writes its ``wandb/`` folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.worker = worker
        self._run = wandb.init(
            project=project,
            name=run_name,
            mode=mode,
            dir=str(self.dir),
            config=dict(config) if config is not None else None,
        )
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    @property
    def run(self) -> Any:
        """The ``wandb`` run object."""
        return self._run

    def log(self, record: Mapping[str, Any]) -> None:
        """Send the record's scalars with its ``step``."""
        scalars = record_scalars(record, self.worker)
        if not scalars:
            return
        step = _record_step(record)
        self._run.log({**scalars, **({"step": step} if step is not None else {})})

    def close(self) -> None:
        """Finish the run (writes the remaining offline files)."""
        self._run.finish()


class MultiLogger:
    """Forwards every record to several loggers; :meth:`close` closes all of them even if one fails."""

    def __init__(self, loggers: Sequence[MetricsLogger] = ()) -> None:
        self.loggers: list[MetricsLogger] = list(loggers)
        """The loggers, in the order given."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Pass the record to every logger."""
        for each in self.loggers:
            each.log(record)

    def close(self) -> None:
        """Close every logger, then raise the first error any of them raised."""
        first: BaseException | None = None
        for each in self.loggers:
            try:
                each.close()
            except Exception as error:  # keep closing the others
                logger.warning("closing %s failed: %s", type(each).__name__, error)
                first = first or error
        if first is not None:
            raise first


def _unique_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise LoggerError(f"logger names must be a list, got the string {names!r}")
    unknown = [name for name in names if name not in LOGGER_NAMES]
    if unknown:
        raise LoggerError(
            f"unknown logger(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(LOGGER_NAMES)}"
        )
    return list(dict.fromkeys(names))


def check_logger_names(names: Sequence[str]) -> None:
    """Cheap launcher check: every name is known and its library is installed (nothing is imported)."""
    for name in _unique_names(names):
        try:
            found = importlib.util.find_spec(_REQUIRED_MODULE[name]) is not None
        except (ImportError, ValueError):  # a broken or blocked install
            found = False
        if not found:
            raise LoggerError(
                f"logger {name!r} needs the {_REQUIRED_MODULE[name]} package: "
                f"pip install farsync[{LOGGER_NAMES[name]}]"
            )


def make_loggers(
    names: Sequence[str],
    run_dir: str | os.PathLike[str],
    run_name: str | None = None,
    config_dict: Mapping[str, Any] | None = None,
    *,
    wandb_project: str = "farsync",
    wandb_mode: str = "offline",
    worker: int | None = 0,
) -> MultiLogger:
    """The loggers ``names`` lists (duplicates ignored), writing under ``run_dir``.

    ``"tensorboard"`` writes event files to ``<run_dir>/tensorboard``; ``"wandb"`` creates a run named
    ``run_name`` in ``wandb_project`` with ``config_dict`` as its config, under ``<run_dir>/wandb``.
    An empty list gives a :class:`MultiLogger` that does nothing. Raises :class:`LoggerError` for an
    unknown name or a missing library.
    """
    chosen = _unique_names(names)
    run_path = Path(run_dir)
    loggers: list[MetricsLogger] = []
    try:
        for name in chosen:
            if name == "tensorboard":
                loggers.append(TensorBoardLogger(run_path / "tensorboard", worker=worker))
            else:
                loggers.append(
                    WandbLogger(
                        wandb_project,
                        mode=wandb_mode,
                        dir=run_path,
                        run_name=run_name,
                        config=config_dict,
                        worker=worker,
                    )
                )
    except BaseException:
        MultiLogger(loggers).close()
        raise
    return MultiLogger(loggers)


def run_loggers(config: RunConfig, run_dir: str | os.PathLike[str]) -> MultiLogger:
    """The ``[logging]`` section's backends for the run in ``run_dir`` (named after the directory, with the
    resolved config attached); an empty :class:`MultiLogger` when none is chosen, importing nothing."""
    import dataclasses

    if not config.logging.backends:
        return MultiLogger()
    return make_loggers(
        config.logging.backends,
        run_dir,
        run_name=Path(run_dir).name,
        config_dict=dataclasses.asdict(config),
        wandb_project=config.logging.wandb_project,
        wandb_mode=config.logging.wandb_mode,
    )
