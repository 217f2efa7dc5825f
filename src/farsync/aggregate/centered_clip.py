"""CenteredClip: iterative robust averaging by clipping around the current estimate.

CenteredClip (Karimireddy, He and Jaggi 2021, "Learning from History for Byzantine Robust Optimization",
ICML 2021, arXiv 2012.10333) repeats ``v <- v + mean_i (x_i - v) * min(1, tau / ||x_i - v||)``: each update
pulls the estimate towards itself by at most ``tau``, so a minority of arbitrary updates can shift the fixed
point by a bounded amount only. BTARD (Gorbunov et al. 2021, "Secure Distributed Training at Scale",
arXiv 2106.11257) uses it as its per-shard aggregation rule.

The radius decides the rule's error: with ``f`` of ``n`` updates pulling by ``tau`` each, the fixed point can
sit about ``f / (n - f) * tau`` from the honest mean, while a radius below the honest spread clips honest
updates too and slows the estimate down. :func:`clipping_radius` derives ``tau`` from the stack itself
(``RADII``):

- ``"fixed"``: ``tau`` as given, an absolute radius (scale-dependent: gradients and pseudo-gradients differ).
- ``"median"``: ``tau`` times the median distance of the updates to their coordinate-wise median.
- ``"neighbors"``: ``tau`` times the median, over the updates, of the distance from each update to its
  ``(n - f)``-th nearest update (itself counted). For an honest update that ball holds ``n - f`` rows
  within the honest diameter whatever the attackers send, and more than half of the updates are honest, so
  the median cannot exceed ``tau`` times the honest diameter: attackers cannot inflate the radius by sending
  large vectors, only shrink it by sitting close together.
"""

from __future__ import annotations

import logging

import torch

from farsync.aggregate._checks import check_byzantine_count, check_count, check_positive, check_stack
from farsync.aggregate.median import median

__all__ = ["RADII", "centered_clip", "centered_clip_with_steps", "clipping_radius"]

RADII = ("fixed", "median", "neighbors")
"""How :func:`clipping_radius` derives CenteredClip's radius (see the module docstring)."""

logger = logging.getLogger(__name__)


def centered_clip_with_steps(
    stack: torch.Tensor,
    tau: float,
    num_iters: int = 20,
    tol: float = 1e-6,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Run CenteredClip on ``stack`` (shape ``[n, d]``); return the estimate (shape ``[d]``) and steps taken.

    The estimate starts from ``init`` (default: the coordinate-wise median) and takes at most ``num_iters``
    steps, stopping after the first step whose norm is below ``tol``. ``tau`` is the clipping radius.
    """
    n, d = check_stack(stack)
    check_positive("tau", tau)
    check_count("num_iters", num_iters)
    check_positive("tol", tol, allow_zero=True)
    if init is None:
        estimate = median(stack)
    elif not isinstance(init, torch.Tensor) or init.shape != (d,):
        shape = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
        raise ValueError(f"init must be a tensor of shape [d]=({d},), got {shape}")
    else:
        estimate = init.to(dtype=stack.dtype, device=stack.device).clone()
    steps_taken = 0
    for _ in range(num_iters):
        offsets = stack - estimate
        distances = torch.linalg.vector_norm(offsets, dim=1)
        # tau / 0 is +inf, so an update sitting exactly on the estimate gets weight 1 and adds nothing.
        weights = (tau / distances).clamp(max=1.0)
        step = (offsets * weights.unsqueeze(1)).sum(dim=0) / n
        estimate = estimate + step
        steps_taken += 1
        if float(torch.linalg.vector_norm(step)) < tol:
            break
    logger.debug("centered_clip: %d steps over n=%d updates of dimension %d", steps_taken, n, d)
    return estimate, steps_taken


def centered_clip(
    stack: torch.Tensor,
    tau: float,
    num_iters: int = 20,
    tol: float = 1e-6,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """CenteredClip estimate of the rows of ``stack`` (shape ``[n, d]``), returned with shape ``[d]``.

    See :func:`centered_clip_with_steps` for the parameters.
    """
    estimate, _ = centered_clip_with_steps(stack, tau, num_iters=num_iters, tol=tol, init=init)
    return estimate


def clipping_radius(stack: torch.Tensor, tau: float, radius: str, f: int = 0) -> float:
    """CenteredClip's radius for ``stack`` (shape ``[n, d]``): ``tau`` scaled as ``radius`` says (``RADII``).

    ``f`` (the number of Byzantine rows tolerated, ``f < n``) is read by ``"neighbors"`` only. Returns 0
    when the rows coincide (the caller then has nothing to clip).
    """
    n, _ = check_stack(stack)
    check_positive("tau", tau)
    if radius == "fixed":
        return tau
    if radius == "median":
        return tau * float(torch.linalg.vector_norm(stack - median(stack), dim=1).median())
    if radius == "neighbors":
        check_byzantine_count(f)
        if f >= n:
            raise ValueError(
                f"f must be < n={n} (the radius reaches each row's n - f nearest rows), got f={f}"
            )
        wide = stack.to(torch.float64)
        distances = torch.cdist(wide, wide, compute_mode="donot_use_mm_for_euclid_dist")
        reach = distances.sort(dim=1).values[:, n - f - 1]
        return tau * float(reach.median())
    raise ValueError(f"radius must be one of {', '.join(RADII)}, got {radius!r}")
