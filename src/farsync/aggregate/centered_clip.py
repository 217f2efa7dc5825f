"""CenteredClip: iterative robust averaging by clipping around the current estimate.

CenteredClip (Karimireddy, He and Jaggi 2021, "Learning from History for Byzantine Robust Optimization",
ICML 2021, arXiv 2012.10333) repeats ``v <- v + mean_i (x_i - v) * min(1, tau / ||x_i - v||)``: each update
pulls the estimate towards itself by at most ``tau``, so a minority of arbitrary updates can shift the fixed
point by a bounded amount only. BTARD (Gorbunov et al. 2021, "Secure Distributed Training at Scale",
arXiv 2106.11257) uses it as its per-shard aggregation rule.
"""

from __future__ import annotations

import logging

import torch

from farsync.aggregate._checks import check_count, check_positive, check_stack
from farsync.aggregate.median import median

__all__ = ["centered_clip", "centered_clip_with_steps"]

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
