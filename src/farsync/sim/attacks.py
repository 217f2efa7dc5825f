"""Simulated Byzantine attacks, used to exercise the robust aggregation rules.

An attack replaces the update a Byzantine worker would honestly send. Its signature is::

    attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor

where ``update`` is the worker's honest flat fp32 update for this round and the result, of the same shape,
is what the worker sends instead. ``ctx`` carries the round, the worker, the number of workers and of
Byzantine workers, the honest updates of all colluding Byzantine workers this round, the honest workers'
updates (an omniscient attacker's knowledge, for attacks that copy them), this worker's own past honest
updates and a seeded ``torch.Generator`` for any randomness (so that runs are reproducible).

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
- ``ipm(eps)``: inner-product manipulation (Xie, Koyejo and Gupta 2020, "Fall of Empires", UAI 2019,
  arXiv 1903.03936): send ``-eps`` times the colluders' honest mean, a small vector whose inner product with
  the true gradient is negative; with ``eps < 1`` it hides inside the honest spread.
- ``mimic(target)``: every attacker copies one honest worker (Karimireddy, He and Jaggi 2022, "Byzantine-
  Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022, arXiv 2006.09365), giving that
  worker's noise (or data skew) ``f + 1`` votes while every sent vector is a genuine honest update.
- ``min_max(perturbation)`` and ``min_sum(perturbation)`` (Shejwalkar and Houmansadr 2021, "Manipulating
  the Byzantine", NDSS 2021): send ``mean + gamma * p`` with the largest ``gamma`` whose distance to the
  colluders' honest updates stays within what honest updates show: the largest distance to any of them
  at most the largest pairwise honest distance (min-max), or the sum of squared distances at most the
  largest such sum of an honest update (min-sum). ``p`` is ``-std`` (default), ``-unit`` mean or ``-sign``.

The in-distribution attacks (ALIE, IPM, min-max, min-sum) estimate the honest statistics from the colluders'
own honest updates (``ctx.honest_updates``): with i.i.d. data they are a sample of the honest
distribution, and the attack needs no access to the honest workers. Mimic copies an honest worker and so
needs ``ctx.honest_peers``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

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
    "ipm",
    "label_flip",
    "load_attack",
    "mimic",
    "min_max",
    "min_sum",
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
    honest_peers: list[torch.Tensor] = field(default_factory=list)
    """Honest updates of the workers that do not attack, in rank order (what an omniscient attacker knows);
    empty unless the simulation provides them (the attacking reducer does for attacks that need them)."""


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


def _colluder_stack(name: str, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
    """The colluders' honest updates as a float64 ``[k, d]`` stack (float64: the gamma search subtracts)."""
    if not ctx.honest_updates:
        raise ValueError(f"{name} needs ctx.honest_updates to hold at least one update, got none")
    return torch.stack(ctx.honest_updates).to(dtype=torch.float64, device=update.device)


def ipm(eps: float = 0.5) -> Attack:
    """Send ``-eps`` times the colluders' honest mean (inner-product manipulation, Xie et al. 2020).

    Small ``eps`` (0.1 to 0.5) keeps the forged vector close to the honest ones, inside most rules'
    acceptance region, while every copy pulls the aggregate against the descent direction.
    """
    _check_finite("eps", eps)
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (the forged vector is -eps times the honest mean), got {eps!r}")

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        colluders = _colluder_stack("ipm", update, ctx)
        return (-eps * colluders.mean(dim=0)).to(update.dtype)

    return attack


def mimic(target: int = 0) -> Attack:
    """Send a copy of the honest worker at index ``target`` of ``ctx.honest_peers`` (Karimireddy et al. 2022).

    The paper picks the worker to copy from the honest updates' main direction over a warm-up period; a
    fixed choice keeps the attack simple and reproducible, and with i.i.d. data every honest worker is an
    equally good target. Every attacker copies the same worker, so it gets ``f + 1`` votes.
    """
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"target must be an integer >= 0 (index among the honest workers), got {target!r}")

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        if not ctx.honest_peers:
            raise ValueError("mimic needs ctx.honest_peers (the honest workers' updates), got none")
        return ctx.honest_peers[target % len(ctx.honest_peers)].to(update.dtype).clone()

    return attack


Perturbation = Literal["std", "unit", "sign"]
_PERTURBATIONS = ("std", "unit", "sign")


def _direction(colluders: torch.Tensor, perturbation: str) -> torch.Tensor:
    """Shejwalkar and Houmansadr's perturbation ``p``: away from the honest mean, coordinate-wise or not."""
    mean = colluders.mean(dim=0)
    if perturbation == "std":
        return -colluders.std(dim=0, correction=0)
    if perturbation == "sign":
        return -torch.sign(mean)
    norm = torch.linalg.vector_norm(mean)
    return -mean / norm if float(norm) > 0 else torch.zeros_like(mean)


def _check_perturbation(perturbation: str) -> None:
    if perturbation not in _PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {', '.join(_PERTURBATIONS)}, got {perturbation!r}")


def min_max(perturbation: Perturbation = "std") -> Attack:
    """Send ``mean + gamma * p`` no farther from any colluder's honest update than honest updates are apart.

    Shejwalkar and Houmansadr (2021), "min-max": the largest ``gamma >= 0`` with
    ``max_i ||mean + gamma p - g_i|| <= max_{i,j} ||g_i - g_j||``. Each constraint is a quadratic in
    ``gamma`` that holds at ``gamma = 0`` (the mean is inside the honest updates' hull), so the answer is the
    smallest of their positive roots, computed exactly rather than by the paper's bisection.
    """
    _check_perturbation(perturbation)

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        colluders = _colluder_stack("min_max", update, ctx)
        mean = colluders.mean(dim=0)
        direction = _direction(colluders, perturbation)
        bound = float(torch.cdist(colluders, colluders).max())
        gamma = _largest_gamma_max(mean - colluders, direction, bound)
        return (mean + gamma * direction).to(update.dtype)

    return attack


def _largest_gamma_max(offsets: torch.Tensor, direction: torch.Tensor, bound: float) -> float:
    """Largest ``gamma`` with ``||offsets_i + gamma * direction|| <= bound`` for every row ``i``."""
    p_squared = float(direction.pow(2).sum())
    if p_squared == 0.0:
        return 0.0
    along = offsets @ direction
    # ||o||^2 <= bound^2 for every row (see min_max), so the discriminant is >= 0 up to rounding.
    discriminant = (along.pow(2) - p_squared * (offsets.pow(2).sum(dim=1) - bound**2)).clamp(min=0.0)
    roots = (-along + discriminant.sqrt()) / p_squared
    return max(0.0, float(roots.min()))


def min_sum(perturbation: Perturbation = "std") -> Attack:
    """Send ``mean + gamma * p`` whose summed squared distance to the colluders' updates looks honest.

    Shejwalkar and Houmansadr (2021), "min-sum": the largest ``gamma >= 0`` with
    ``sum_i ||mean + gamma p - g_i||^2 <= max_i sum_j ||g_i - g_j||^2``. The cross term vanishes around the
    mean, so ``gamma = sqrt((max_i sum_j ||g_i - g_j||^2 - sum_i ||mean - g_i||^2) / (k ||p||^2))``.
    """
    _check_perturbation(perturbation)

    def attack(update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        colluders = _colluder_stack("min_sum", update, ctx)
        count = colluders.shape[0]
        mean = colluders.mean(dim=0)
        direction = _direction(colluders, perturbation)
        p_squared = float(direction.pow(2).sum())
        bound = float(torch.cdist(colluders, colluders).pow(2).sum(dim=1).max())
        spread = float((colluders - mean).pow(2).sum())
        gamma = math.sqrt(max(bound - spread, 0.0) / (count * p_squared)) if p_squared > 0 else 0.0
        return (mean + gamma * direction).to(update.dtype)

    return attack


BUILTIN_ATTACKS: dict[str, Callable[..., Attack]] = {
    "sign_flip": sign_flip,
    "gaussian": gaussian,
    "constant": constant,
    "alie": alie,
    LABEL_FLIP: label_flip,
    "stale": stale,
    "ipm": ipm,
    "mimic": mimic,
    "min_max": min_max,
    "min_sum": min_sum,
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
