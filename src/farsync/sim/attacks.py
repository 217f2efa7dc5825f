"""Simulated Byzantine attacks, used to exercise the robust aggregation rules.

An attack replaces the update a Byzantine worker would honestly send. Its signature is::

    attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor

where ``update`` is the worker's honest flat fp32 update for this round and the result, of the same shape,
is what the worker sends instead. ``ctx`` carries the round, the worker, the number of workers and of
Byzantine workers, the honest updates of all colluding Byzantine workers this round, this worker's own
past honest updates and a seeded ``torch.Generator`` for any randomness (so that runs are reproducible).

Attacks are built by factories that take the attack's parameters as keywords and return the attack
function. :func:`load_attack` accepts the name of a built-in factory (see ``BUILTIN_ATTACKS``) or a plug-in
written as ``"package.module:function"``, where ``function`` is such a factory::

    def make_attack(**params) -> Attack: ...

Built-ins:

- ``sign_flip(scale)``: send ``-scale * update``.
- ``gaussian(std)``: send a vector drawn from ``N(0, std^2)``.
- ``constant(value)``: send a vector with every coordinate equal to ``value``.
- ``alie(z)``: "A Little Is Enough" (Baruch, Baruch and Goldberg 2019, arXiv 1902.06156): send the
  coordinate-wise mean of the colluders' honest updates minus ``z`` standard deviations, a shift small
  enough to pass as honest yet consistent across all colluders.
- ``label_flip()``: train on flipped labels (see :func:`flip_labels`, applied by the worker to its data);
  the update itself is sent unchanged.
- ``stale(k)``: replay this worker's honest update from ``k`` rounds ago.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from farsync.data.classification import flip_labels

__all__ = [
    "BUILTIN_ATTACKS",
    "LABEL_FLIP",
    "Attack",
    "AttackContext",
    "alie",
    "alie_z",
    "constant",
    "flip_labels",
    "gaussian",
    "label_flip",
    "load_attack",
    "sign_flip",
    "stale",
]

logger = logging.getLogger(__name__)

LABEL_FLIP = "label_flip"
"""Name of the data-level label-flipping attack; a worker seeing it flips its labels with :func:`flip_labels`."""


@dataclass(kw_only=True)
class AttackContext:
    """What a Byzantine worker knows when it forges its update."""

    round: int
    """Index of the current communication round."""
    worker: int
    """Rank of the attacking worker."""
    num_workers: int
    """Total number of workers taking part in the aggregation, Byzantine ones included."""
    num_byzantine: int
    """Number of colluding Byzantine workers."""
    honest_updates: list[torch.Tensor]
    """Honest flat fp32 updates the colluding Byzantine workers computed this round."""
    history: list[torch.Tensor]
    """This worker's own past honest updates, oldest first."""
    generator: torch.Generator
    """Seeded source of randomness for attacks that need one."""


Attack = Callable[[torch.Tensor, AttackContext], torch.Tensor]
"""Replace a worker's honest update by a forged one of the same shape."""


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def sign_flip(scale: float = 1000.0) -> Attack:
    """Send ``-scale * update``: the honest direction reversed and magnified."""
    _check_finite("scale", scale)

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return -scale * update

    return attack


def gaussian(std: float = 100.0) -> Attack:
    """Send a vector drawn from ``N(0, std^2)`` with ``ctx.generator``; the default swamps typical updates."""
    _check_finite("std", std)
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        noise = torch.randn(
            update.shape, generator=ctx.generator, dtype=update.dtype, device=ctx.generator.device
        )
        return (std * noise).to(update.device)

    return attack


def constant(value: float = 100.0) -> Attack:
    """Send a vector with every coordinate equal to ``value``."""
    _check_finite("value", value)

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return torch.full_like(update, value)

    return attack


def alie_z(num_workers: int, num_byzantine: int) -> float:
    """Default ALIE shift, in standard deviations, for ``n`` workers of which ``f`` are Byzantine.

    Following Baruch et al. (2019), ``s = floor(n / 2 + 1) - f`` honest workers must be won over and
    ``z = Phi^-1((n - s) / n)``, with ``Phi`` the standard normal CDF. Raises ``ValueError`` when
    ``(n - s) / n`` falls outside ``(0, 1)``, e.g. when ``f`` is already a majority.
    """
    n, f = num_workers, num_byzantine
    supporters_needed = math.floor(n / 2 + 1) - f
    quantile = (n - supporters_needed) / n if n > 0 else math.nan
    if not 0.0 < quantile < 1.0:
        raise ValueError(
            f"ALIE z is undefined for num_workers={n}, num_byzantine={f}: (n - s) / n = {quantile} "
            "must lie in (0, 1); pass z explicitly"
        )
    return statistics.NormalDist().inv_cdf(quantile)


def alie(z: float | None = None) -> Attack:
    """Send ``mean - z * std`` of the colluders' honest updates, coordinate-wise ("A Little Is Enough").

    ``z = None`` derives the shift from ``ctx.num_workers`` and ``ctx.num_byzantine`` with :func:`alie_z`.
    The standard deviation is the population one (no Bessel correction), so a single colluder gives
    ``std = 0`` rather than NaN.
    """
    if z is not None:
        _check_finite("z", z)

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        if not ctx.honest_updates:
            raise ValueError("alie needs ctx.honest_updates to hold at least one update, got none")
        shift = alie_z(ctx.num_workers, ctx.num_byzantine) if z is None else z
        colluders = torch.stack(ctx.honest_updates).to(dtype=update.dtype, device=update.device)
        spread = colluders.std(dim=0, correction=0)
        return colluders.mean(dim=0) - shift * spread

    return attack


def label_flip() -> Attack:
    """Send the update unchanged: the attack lives in the data, flipped by the worker with :func:`flip_labels`."""

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return update

    return attack


def stale(k: int = 1) -> Attack:
    """Send this worker's honest update from ``k`` rounds ago (``history[-k]``), or ``update`` if too young."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (rounds back), got {k!r}")

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        if len(ctx.history) < k:
            return update
        # Cloned so that a caller modifying the sent update in place cannot corrupt the worker's history.
        return ctx.history[-k].clone()

    return attack


BUILTIN_ATTACKS: dict[str, Callable[..., Attack]] = {
    "sign_flip": sign_flip,
    "gaussian": gaussian,
    "constant": constant,
    "alie": alie,
    LABEL_FLIP: label_flip,
    "stale": stale,
}
"""Built-in attack factories by name."""


def _resolve_factory(spec: str) -> Callable[..., Attack]:
    if spec in BUILTIN_ATTACKS:
        return BUILTIN_ATTACKS[spec]
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ValueError(
            f"attack must be one of {', '.join(BUILTIN_ATTACKS)} or 'package.module:function', got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"attack {spec!r}: cannot import module {module_name!r}: {error}") from error
    factory = getattr(module, function_name, None)
    if factory is None:
        raise ValueError(f"attack {spec!r}: module {module_name!r} has no attribute {function_name!r}")
    if not callable(factory):
        raise ValueError(f"attack {spec!r}: {function_name!r} is a {type(factory).__name__}, not callable")
    resolved: Callable[..., Attack] = factory
    return resolved


def load_attack(spec: str, **params: object) -> Attack:
    """Build the attack named by ``spec`` (built-in name or ``"package.module:function"``) with ``params``.

    Raises ``ValueError`` when the module or function is missing, not callable, does not accept ``params``,
    or does not return a callable attack.
    """
    factory = _resolve_factory(spec)
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as error:
        raise ValueError(f"attack {spec!r} does not accept parameters {params}: {error}") from error
    except ValueError:
        pass  # Some callables (builtins, C extensions) have no inspectable signature; let the call decide.
    attack = factory(**params)
    if not callable(attack):
        raise ValueError(
            f"attack {spec!r} factory returned a {type(attack).__name__}, not an attack function"
        )
    logger.info("loaded attack %s with parameters %s", spec, params)
    return attack
