"""Verified rollouts from untrusted inference workers: a TOPLOC-like prover and verifier.

This module owns the :class:`~farsync.rl.proofs.Prover` and :class:`~farsync.rl.proofs.Verifier` that
farsync's RL runners plug in when inference workers are not trusted, the tolerances they use, and
:func:`sample_group_with_proofs`, the sampler that produces checkable rollouts at almost no extra cost.

Two independent checks, after TOPLOC (Ong et al., arXiv 2501.16007) and INTELLECT-2 (arXiv 2505.07291):

1. **Activations** (:mod:`farsync.rl.verify_fingerprint`): the worker commits to the top-k values of its
   last hidden state per chunk of tokens; the trainer recomputes them with one forward pass over the claimed
   tokens and rejects a rollout whose values differ by more than fp nondeterminism allows (per precision the
   worker declares). This catches a different model (measured: another initialisation always; a copy with 1%
   weight noise at float32 tolerance, but not at bfloat16's, which must admit bfloat16's own error).
2. **Sampling** (:mod:`farsync.rl.verify_sampling`): the claimed tokens must be what the claimed seed and
   temperature draw from the recomputed logits (Gumbel-max replay), and the claimed sampling log-probabilities
   must match the claimed temperature. This catches an edited token, another seed, another temperature.

Only a random ``check_fraction`` of rollouts get the forward pass; the fingerprint's format and digest are
checked for all. A rollout that fails is rejected with its reason; a worker that fails ``num_strikes`` times
is excluded (all its later rollouts are rejected without a forward pass) and the event logged. Tolerances
(:data:`DEFAULT_TOLERANCES`) come from measuring honest mismatches (batched vs unbatched forward, bfloat16 vs
float32) with a margin; ``benchmarks/results/rl.md`` records the measurement.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from farsync.rl.messages import Rollout
from farsync.rl.proofs import Verdict
from farsync.rl.verify_fingerprint import (
    PRECISIONS,
    Fingerprint,
    FingerprintRejected,
    build_fingerprint,
    capture_final_hidden,
    compare_fingerprint,
    parse_fingerprint,
    proof_positions,
)
from farsync.rl.verify_sampling import GumbelSampler, check_sampling

__all__ = [
    "DEFAULT_TOLERANCES",
    "Tolerance",
    "TopkProver",
    "TopkVerifier",
    "recompute",
    "sample_group_with_proofs",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """How far an honest rollout may be from the verifier's recomputation (one set per worker precision)."""

    max_rel_error: float
    """Largest relative error of one fingerprint value."""
    mean_rel_error: float
    """Largest mean relative error over a chunk's values."""
    min_rank_ratio: float
    """Smallest ratio of a claimed index's recomputed magnitude to the recomputed k-th largest."""
    max_margin: float
    """Largest Gumbel-score shortfall of a claimed token, in logit units."""
    max_logprob_error: float
    """Largest sampling log-probability error, in logit units (times the temperature)."""


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # Worst honest deviations measured over 320 rollouts per precision (benchmarks/results/rl.md), times 2.5-3:
    # float32 0.0036 / 0.0022 / 1.0 / 0 / 6e-6 (the values' bfloat16 rounding is up to 0.0039 alone);
    # bfloat16 weights 0.012 / 0.0051 / 0.991 / 0.16 / 0.14; float16 weights 0.0042 / 0.0024 / 0.9995 / 0.0074 / 0.026.
    "float32": Tolerance(
        max_rel_error=0.01, mean_rel_error=0.005, min_rank_ratio=0.98, max_margin=0.01, max_logprob_error=0.01
    ),
    "bfloat16": Tolerance(
        max_rel_error=0.035, mean_rel_error=0.015, min_rank_ratio=0.95, max_margin=0.5, max_logprob_error=0.45
    ),
    "float16": Tolerance(
        max_rel_error=0.015, mean_rel_error=0.008, min_rank_ratio=0.98, max_margin=0.05, max_logprob_error=0.1
    ),
}
"""Tolerances per worker precision against a float32 verifier (calibration: benchmarks/results/rl.md)."""


def _precision_of(model: nn.Module) -> str:
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype not in PRECISIONS:
        raise ValueError(f"model dtype {dtype} has no fingerprint precision; allowed {sorted(PRECISIONS)}")
    return dtype


@torch.no_grad()
def recompute(
    model: nn.Module, prompt_ids: Sequence[int], completion_ids: Sequence[int], module_name: str | None = None
) -> tuple[Tensor, Tensor]:
    """One forward pass over the claimed tokens: ``(logits [N, V], hidden [N, W])`` at the positions that
    produced the ``N`` completion tokens (float32)."""
    tokens = torch.tensor([list(prompt_ids) + list(completion_ids)[:-1]], dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with capture_final_hidden(model, module_name) as captured:
            logits = model(tokens)
    finally:
        model.train(was_training)
    positions = proof_positions(len(prompt_ids), len(completion_ids))
    return logits[0, positions].float(), captured[-1][0, positions].float()


class TopkProver:
    """Worker side (:class:`~farsync.rl.proofs.Prover`): fingerprints a rollout with one forward pass.

    A sampler that already ran the model should use :func:`sample_group_with_proofs` instead, which takes
    the fingerprint from its last forward pass for free.
    """

    def __init__(self, *, k: int = 8, chunk_tokens: int = 32, module_name: str | None = None) -> None:
        self.k, self.chunk_tokens, self.module_name = k, chunk_tokens, module_name

    def prove(self, model: nn.Module, prompt_ids: tuple[int, ...], completion_ids: tuple[int, ...]) -> bytes:
        if not completion_ids:
            hidden = torch.zeros(0, 1)
        else:
            _, hidden = recompute(model, prompt_ids, completion_ids, self.module_name)
        return build_fingerprint(
            hidden,
            prompt_ids,
            completion_ids,
            precision=_precision_of(model),
            k=self.k,
            chunk_tokens=self.chunk_tokens,
        )


class TopkVerifier:
    """Trainer side (:class:`~farsync.rl.proofs.Verifier`): the two checks of the module docstring.

    Args:
        check_fraction: share of rollouts that get the forward pass (the rest pass after the format check).
        seed: seeds the choice of rollouts to check.
        tolerances: per worker precision; defaults to :data:`DEFAULT_TOLERANCES`.
        num_strikes: failed checks after which a worker is excluded.
        module_name: the model's final norm, if not found by name (see ``capture_final_hidden``).
        replay_sampling: check that each token is what the rollout's seed draws (the worker must sample with
            :func:`sample_group_with_proofs` / :func:`~farsync.rl.verify_sampling.sample_tokens`). ``False``
            for workers with another sampler (``torch.multinomial``): only the sampling log-probabilities are
            checked against the claimed temperature, so a worker that samples at another temperature and
            restates the log-probabilities, or that picks its tokens, is no longer caught.

    ``excluded`` maps excluded workers to the reason; ``counts`` counts verdicts by kind.
    """

    def __init__(
        self,
        *,
        check_fraction: float = 1.0,
        seed: int = 0,
        tolerances: dict[str, Tolerance] | None = None,
        num_strikes: int = 1,
        module_name: str | None = None,
        replay_sampling: bool = True,
    ) -> None:
        if not 0.0 < check_fraction <= 1.0 or num_strikes < 1:
            raise ValueError(
                f"check_fraction must be in (0, 1] and num_strikes >= 1, got {check_fraction}, {num_strikes}"
            )
        self.check_fraction, self.num_strikes, self.module_name = check_fraction, num_strikes, module_name
        self.replay_sampling = replay_sampling
        self.tolerances = dict(DEFAULT_TOLERANCES if tolerances is None else tolerances)
        self._rng = random.Random(seed)
        self.strikes: Counter[str] = Counter()
        self.excluded: dict[str, str] = {}
        self.counts: Counter[str] = Counter()

    def verify(self, rollout: Rollout, model: nn.Module) -> Verdict:
        if rollout.worker_id in self.excluded:
            self.counts["excluded"] += 1
            return Verdict(False, f"worker {rollout.worker_id} is excluded")
        try:
            fingerprint = parse_fingerprint(rollout.fingerprint, rollout.prompt_ids, rollout.completion_ids)
        except FingerprintRejected as error:
            return self._caught(rollout, str(error))
        if self._rng.random() >= self.check_fraction:
            self.counts["unchecked"] += 1
            return Verdict(True)
        reason = self._check(rollout, model, fingerprint)
        if reason:
            return self._caught(rollout, reason)
        self.counts["verified"] += 1
        return Verdict(True)

    def _check(self, rollout: Rollout, model: nn.Module, fingerprint: Fingerprint) -> str:
        if not rollout.completion_ids:
            return ""
        logits, hidden = recompute(model, rollout.prompt_ids, rollout.completion_ids, self.module_name)
        precision = fingerprint.precision
        if precision not in self.tolerances:
            return f"precision {precision} is not accepted (accepted: {sorted(self.tolerances)})"
        tolerance = self.tolerances[precision]
        errors = compare_fingerprint(fingerprint, hidden)
        if not (
            errors.max_rel_error <= tolerance.max_rel_error
            and errors.mean_rel_error <= tolerance.mean_rel_error
            and errors.min_rank_ratio >= tolerance.min_rank_ratio
        ):
            return (
                f"activations differ ({precision}): max relative error {errors.max_rel_error:.3g}, "
                f"mean {errors.mean_rel_error:.3g}, rank ratio {errors.min_rank_ratio:.3g}"
            )
        check = check_sampling(
            logits,
            rollout.completion_ids,
            rollout.sampling_logprobs,
            rollout.temperature,
            rollout.seed,
            max_margin=tolerance.max_margin if self.replay_sampling else math.inf,
            max_logprob_error=tolerance.max_logprob_error,
        )
        return check.reason

    def _caught(self, rollout: Rollout, reason: str) -> Verdict:
        worker = rollout.worker_id
        self.counts["rejected"] += 1
        self.strikes[worker] += 1
        logger.warning("rollout %s from worker %s rejected: %s", rollout.group_id, worker, reason)
        if self.strikes[worker] >= self.num_strikes:
            self.excluded[worker] = reason
            logger.warning(
                "worker %s excluded after %d failed checks: %s", worker, self.strikes[worker], reason
            )
        return Verdict(False, reason)


@torch.no_grad()
def sample_group_with_proofs(
    model: nn.Module,
    prompt_ids: Sequence[int],
    *,
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    end_id: int,
    k: int = 8,
    chunk_tokens: int = 32,
    precision: str | None = None,
    module_name: str | None = None,
) -> list[tuple[list[int], list[float], bytes]]:
    """``len(seeds)`` completions of one prompt, each ``(token ids, sampling log-probabilities, fingerprint)``.

    Token ``j`` of row ``i`` is :func:`~farsync.rl.verify_sampling.sample_tokens` with ``seeds[i]`` (one seed
    per rollout; put it in :attr:`Rollout.seed`). A completion stops after ``end_id`` (included). The
    fingerprint comes from the hidden states of the last forward pass, which covers every position that
    produced a token (the model is causal), so proving costs no extra forward pass.
    """
    tokens = torch.tensor([list(prompt_ids)] * len(seeds), dtype=torch.long)
    sampler: GumbelSampler | None = None
    finished = torch.zeros(len(seeds), dtype=torch.bool)
    chosen: list[Tensor] = []
    logprobs: list[Tensor] = []
    with capture_final_hidden(model, module_name) as captured:
        for step in range(max_new_tokens):
            captured.clear()
            logits = model(tokens)[:, -1, :].float()
            sampler = sampler if sampler is not None else GumbelSampler(seeds, logits.shape[-1])
            token = sampler(logits, temperature, step)
            log_dist = F.log_softmax(logits / max(temperature, 1e-12), dim=-1)
            chosen.append(token)
            logprobs.append(log_dist.gather(1, token[:, None]).squeeze(1))
            finished = finished | (token == end_id)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            if bool(finished.all()):
                break
        last_hidden = captured[-1] if captured else None
    precision = precision if precision is not None else _precision_of(model)
    results: list[tuple[list[int], list[float], bytes]] = []
    for row in range(len(seeds)):
        ids = [int(t[row]) for t in chosen]
        length = ids.index(end_id) + 1 if end_id in ids else len(ids)
        ids, values = ids[:length], [float(v[row]) for v in logprobs[:length]]
        hidden = (
            torch.zeros(0, 1)
            if last_hidden is None
            else last_hidden[row, proof_positions(len(prompt_ids), length)]
        )
        proof = build_fingerprint(
            hidden, prompt_ids, ids, precision=precision, k=k, chunk_tokens=chunk_tokens
        )
        results.append((ids, values, proof))
    return results
