"""Replayable sampling: each rollout's tokens are a pure function of its logits, temperature and seed.

This module owns the sampling rule that makes a rollout's sampling checkable by a trainer that only has the
rollout (:mod:`farsync.rl.verify`), and the check itself:

* :func:`sample_tokens` draws token ``j`` of a rollout as ``argmax(logits_j / T + g_j)`` where ``g_j`` is
  standard Gumbel noise generated from ``(seed, j)`` alone (:func:`gumbel_noise`; drawn in blocks of
  :data:`NOISE_BLOCK` tokens by :class:`GumbelSampler`, the generation loop's form). That is an exact sample of
  ``softmax(logits_j / T)`` (the Gumbel-max trick, Gumbel 1954; Maddison et al. 2014, arXiv 1411.0030), and
  unlike ``torch.multinomial`` on a shared generator its randomness does not depend on batching, on the other
  rollouts of the group, or on how many random numbers a kernel consumed. ``T = 0`` is greedy.
* :func:`check_sampling` recomputes what the claimed seed and temperature imply: every claimed token must
  be the Gumbel argmax up to a margin (fp nondeterminism moves logits a little), and every claimed sampling
  log-probability must match ``log_softmax(logits / T)`` up to a tolerance. A different seed, temperature,
  model or an edited token breaks one or both.

Each rollout carries its own seed (not the group's): the rollouts of a group share a prompt, so a shared
seed would make them identical. :func:`rollout_seed` derives per-rollout seeds from a group seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NOISE_BLOCK",
    "GumbelSampler",
    "SamplingCheck",
    "check_sampling",
    "gumbel_noise",
    "gumbel_noise_steps",
    "rollout_seed",
    "sample_tokens",
]

_SEED_MASK = 2**63 - 1
_TINY = 1e-20
NOISE_BLOCK = 32
"""Tokens whose noise is drawn together: block ``b`` of a rollout comes from one generator seeded by
``(seed, b)``, so drawing it costs one generator per 32 tokens, and any token's noise can still be recomputed
on its own."""


def rollout_seed(group_seed: int, index: int) -> int:
    """The seed of rollout ``index`` of a group sampled with ``group_seed`` (a hash: distinct, in [0, 2^63))."""
    digest = hashlib.blake2b(f"{group_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _SEED_MASK


def _noise_block(seed: int, block: int, vocab_size: int) -> Tensor:
    digest = hashlib.blake2b(f"{seed}/{block}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & _SEED_MASK)
    uniform = torch.rand(NOISE_BLOCK, vocab_size, generator=generator, dtype=torch.float64)
    return -torch.log(-torch.log(uniform.clamp(_TINY, 1.0 - 1e-16)))


def gumbel_noise(seed: int, step: int, vocab_size: int) -> Tensor:
    """Standard Gumbel noise ``[vocab_size]`` (float64) for token ``step`` of the rollout seeded ``seed``."""
    return _noise_block(seed, step // NOISE_BLOCK, vocab_size)[step % NOISE_BLOCK]


def gumbel_noise_steps(seed: int, num_steps: int, vocab_size: int) -> Tensor:
    """The noise of tokens ``0 .. num_steps - 1`` of the rollout seeded ``seed``: ``[num_steps, vocab_size]``."""
    blocks = [_noise_block(seed, b, vocab_size) for b in range(-(-num_steps // NOISE_BLOCK))]
    return torch.cat(blocks)[:num_steps] if blocks else torch.zeros(0, vocab_size, dtype=torch.float64)


class GumbelSampler:
    """:func:`sample_tokens` for one batch of rollouts generated step by step, drawing each row's noise one
    block at a time (the same numbers as :func:`gumbel_noise`)."""

    def __init__(self, seeds: Sequence[int], vocab_size: int) -> None:
        self.seeds, self.vocab_size = list(seeds), vocab_size
        self._block = -1
        self._noise = torch.zeros(0)

    def __call__(self, logits: Tensor, temperature: float, step: int) -> Tensor:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0:
            return logits.argmax(dim=-1)
        if step // NOISE_BLOCK != self._block:
            self._block = step // NOISE_BLOCK
            self._noise = torch.stack([_noise_block(s, self._block, self.vocab_size) for s in self.seeds])
        return (logits.double() / temperature + self._noise[:, step % NOISE_BLOCK]).argmax(dim=-1)


def sample_tokens(logits: Tensor, temperature: float, seeds: Sequence[int], step: int) -> Tensor:
    """Token ``step`` of each rollout: ``argmax(logits / T + gumbel(seed, step))`` (greedy at ``T = 0``).

    Args:
        logits: ``[B, V]`` next-token logits, one row per rollout.
        temperature: sampling temperature (``>= 0``).
        seeds: one seed per row (:func:`rollout_seed`).
        step: index of the token within the completion (0 for the first sampled token).
    """
    if len(seeds) != logits.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {logits.shape[0]} rows of logits")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    noise = torch.stack([gumbel_noise(seed, step, logits.shape[-1]) for seed in seeds])
    return (logits.double() / temperature + noise).argmax(dim=-1)


@dataclass(frozen=True)
class SamplingCheck:
    """The outcome of :func:`check_sampling` with its worst deviations (logit units)."""

    ok: bool
    reason: str
    worst_margin: float
    """Largest ``T * (max score - claimed token's score)`` over the completion (0: every token was the argmax)."""
    worst_logprob_error: float
    """Largest ``|claimed - recomputed|`` sampling log-probability, times ``T``."""


def check_sampling(
    logits: Tensor,
    completion_ids: Sequence[int],
    claimed_logprobs: Sequence[float],
    temperature: float,
    seed: int,
    *,
    max_margin: float,
    max_logprob_error: float,
) -> SamplingCheck:
    """Checks that ``completion_ids`` are what ``seed`` and ``temperature`` draw from ``logits``.

    Args:
        logits: ``[N, V]`` recomputed logits, row ``j`` predicting completion token ``j``.
        completion_ids: the claimed tokens (``N``).
        claimed_logprobs: the claimed sampling log-probabilities (``N``).
        temperature: the claimed temperature.
        seed: the claimed per-rollout seed.
        max_margin: largest allowed ``T * (max score - claimed score)``, in logit units (fp nondeterminism).
        max_logprob_error: largest allowed ``T * |claimed - recomputed log-probability|``, in logit units.

    Deviations are scaled by ``T`` so one tolerance, set in logit units, holds at every temperature.
    """
    num_tokens = len(completion_ids)
    if logits.shape[0] != num_tokens or len(claimed_logprobs) != num_tokens:
        return SamplingCheck(False, "sampling: lengths differ", math.inf, math.inf)
    if num_tokens == 0:
        return SamplingCheck(True, "", 0.0, 0.0)
    tokens = torch.tensor(list(completion_ids), dtype=torch.long)
    scaled = logits.double() / max(temperature, 1e-12)
    if temperature > 0:
        scores = scaled + gumbel_noise_steps(seed, num_tokens, logits.shape[-1])
    else:
        scores = scaled
    claimed_scores = scores.gather(1, tokens[:, None]).squeeze(1)
    margins = (scores.max(dim=1).values - claimed_scores) * max(temperature, 1e-12)
    recomputed = F.log_softmax(scaled, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    errors = (recomputed - torch.tensor(list(claimed_logprobs), dtype=torch.float64)).abs()
    errors = errors * (temperature if temperature > 0 else 1.0)
    worst_margin, worst_error = float(margins.max()), float(errors.max())
    if worst_margin > max_margin:
        step = int(margins.argmax())
        return SamplingCheck(
            False, f"sampling: token {step} is not what seed and temperature draw", worst_margin, worst_error
        )
    if not worst_error <= max_logprob_error:
        step = int(errors.argmax())
        return SamplingCheck(
            False,
            f"sampling: log-probability of token {step} differs at this temperature",
            worst_margin,
            worst_error,
        )
    return SamplingCheck(True, "", worst_margin, worst_error)
