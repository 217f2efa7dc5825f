"""Measurements behind rollout verification: honest mismatch (calibration), detection and proof overhead.

This module owns the functions ``farsync bench rl`` (or a script) calls to measure :mod:`farsync.rl.verify`:

* :func:`calibrate`: the worst honest deviation between a worker's fingerprint and sampling claims and a
  float32 verifier's recomputation, for workers that sample in batches in float32, bfloat16 weights,
  bfloat16 autocast or float16 weights; :data:`~farsync.rl.verify.DEFAULT_TOLERANCES` are set from it with
  a margin.
* :func:`detection`: false positives (honest rollouts rejected) and false negatives (tampered rollouts
  accepted) over many rollouts, for each kind of tampering.
* :func:`proof_overhead`: the time spent building fingerprints (and drawing replayable Gumbel noise instead of
  ``torch.multinomial``) as a share of generation time.

The policy is farsync's GPT with a sharpened output layer (``head_scale``): a freshly initialised GPT has
near-uniform next-token distributions, under which temperature and seed barely change what is sampled; a
trained policy's logits spread over several units, which the scale imitates.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from farsync.models.gpt import GPT, GPTConfig
from farsync.rl.messages import Rollout
from farsync.rl.verify import TopkProver, TopkVerifier, recompute, sample_group_with_proofs
from farsync.rl.verify_fingerprint import build_fingerprint, compare_fingerprint, parse_fingerprint
from farsync.rl.verify_sampling import check_sampling, rollout_seed

__all__ = [
    "calibrate",
    "detection",
    "make_policy",
    "markdown",
    "perturbed_copy",
    "proof_overhead",
    "rollouts_from_samples",
    "run",
    "sample_rollouts",
    "tamper",
]

VOCAB, END_ID = 44, 0


def make_policy(seed: int = 0, *, width: int = 64, num_layers: int = 2, head_scale: float = 30.0) -> GPT:
    """A small GPT over a 44-token vocabulary (the RL tasks' size) with logits sharpened by ``head_scale``."""
    torch.manual_seed(seed)
    model = GPT(
        GPTConfig(num_layers=num_layers, width=width, num_heads=4, context_length=96, vocab_size=VOCAB)
    )
    with torch.no_grad():
        model.head.linear.weight.mul_(head_scale)
    return model.eval()


class _Autocast(nn.Module):
    """Runs a model under bfloat16 autocast (shares the model's modules; its final norm stays reachable)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.head = model.head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits: torch.Tensor = self.inner(tokens)
        return logits


def worker_variants(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Honest workers of ``model``: name -> (worker model, declared precision)."""
    return {
        "float32 batched": (model, "float32"),
        "bfloat16 weights": (copy.deepcopy(model).to(torch.bfloat16), "bfloat16"),
        "bfloat16 autocast": (_Autocast(model), "bfloat16"),
        "float16 weights": (copy.deepcopy(model).to(torch.float16), "float16"),
    }


def sample_rollouts(
    worker: nn.Module,
    precision: str,
    *,
    num_groups: int,
    group_size: int,
    temperature: float,
    max_new_tokens: int = 24,
    worker_id: str = "w0",
    seed: int = 0,
) -> list[Rollout]:
    """``num_groups * group_size`` rollouts of random prompts (10-20 tokens), sampled in batches by ``worker``."""
    generator = torch.Generator().manual_seed(seed)
    rollouts: list[Rollout] = []
    for group in range(num_groups):
        length = int(torch.randint(10, 21, (1,), generator=generator))
        prompt = tuple(torch.randint(1, VOCAB, (length,), generator=generator).tolist())
        seeds = [rollout_seed(seed * 100_003 + group, index) for index in range(group_size)]
        outputs = sample_group_with_proofs(
            worker,
            prompt,
            seeds=seeds,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            end_id=END_ID,
            precision=precision,
        )
        rollouts += rollouts_from_samples(
            prompt, seeds, outputs, temperature=temperature, worker_id=worker_id, group_id=f"g{seed}-{group}"
        )
    return rollouts


def rollouts_from_samples(
    prompt: tuple[int, ...],
    seeds: list[int],
    samples: list[tuple[list[int], list[float], bytes]],
    *,
    temperature: float,
    worker_id: str,
    group_id: str = "g0",
) -> list[Rollout]:
    """:class:`~farsync.rl.messages.Rollout` records of one group from :func:`sample_group_with_proofs`."""
    return [
        Rollout(
            task_id=f"bench/{group_id}",
            group_id=group_id,
            group_size=len(samples),
            prompt_ids=prompt,
            completion_ids=tuple(ids),
            sampling_logprobs=tuple(logprobs),
            reward=0.0,
            policy_version=0,
            worker_id=worker_id,
            seed=seed,
            temperature=temperature,
            fingerprint=proof,
        )
        for seed, (ids, logprobs, proof) in zip(seeds, samples, strict=True)
    ]


def calibrate(
    model: nn.Module,
    *,
    num_groups: int = 48,
    group_size: int = 4,
    temperatures: tuple[float, ...] = (0.7, 1.0),
) -> dict[str, dict[str, float]]:
    """Worst honest deviations per worker variant against ``model`` in float32 (see the module docstring)."""
    results: dict[str, dict[str, float]] = {}
    for name, (worker, precision) in worker_variants(model).items():
        worst = {
            "max_rel_error": 0.0,
            "mean_rel_error": 0.0,
            "min_rank_ratio": 1.0,
            "margin": 0.0,
            "logprob": 0.0,
        }
        for temperature in temperatures:
            rollouts = sample_rollouts(
                worker, precision, num_groups=num_groups, group_size=group_size, temperature=temperature
            )
            for rollout in rollouts:
                if not rollout.completion_ids:
                    continue
                logits, hidden = recompute(model, rollout.prompt_ids, rollout.completion_ids)
                fingerprint = parse_fingerprint(
                    rollout.fingerprint, rollout.prompt_ids, rollout.completion_ids
                )
                errors = compare_fingerprint(fingerprint, hidden)
                check = check_sampling(
                    logits,
                    rollout.completion_ids,
                    rollout.sampling_logprobs,
                    rollout.temperature,
                    rollout.seed,
                    max_margin=float("inf"),
                    max_logprob_error=float("inf"),
                )
                worst["max_rel_error"] = max(worst["max_rel_error"], errors.max_rel_error)
                worst["mean_rel_error"] = max(worst["mean_rel_error"], errors.mean_rel_error)
                worst["min_rank_ratio"] = min(worst["min_rank_ratio"], errors.min_rank_ratio)
                worst["margin"] = max(worst["margin"], check.worst_margin)
                worst["logprob"] = max(worst["logprob"], check.worst_logprob_error)
        results[name] = worst
    return results


def perturbed_copy(model: nn.Module, relative: float, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with Gaussian noise of ``relative`` times each parameter's std added."""
    copied = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in copied.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * relative * parameter.std().clamp_min(1e-3))
    return copied


def tamper(rollout: Rollout, kind: str, model: nn.Module, impostor: nn.Module) -> Rollout:
    """``rollout`` altered by one lie: ``other_model`` (sampled by ``impostor``, fingerprinted honestly by it),
    ``edited_tokens`` (one completion token changed, fingerprint and digest recomputed with ``model``),
    ``other_temperature`` (sampled at 1.5x, claimed and log-probabilities restated at the rollout's) or
    ``other_seed`` (claims another seed)."""
    prompt = rollout.prompt_ids
    if kind == "other_model":
        ((ids, logprobs, proof),) = sample_group_with_proofs(
            impostor,
            prompt,
            seeds=[rollout.seed],
            max_new_tokens=24,
            temperature=rollout.temperature,
            end_id=END_ID,
        )
        return replace(
            rollout, completion_ids=tuple(ids), sampling_logprobs=tuple(logprobs), fingerprint=proof
        )
    if kind == "edited_tokens":
        ids = list(rollout.completion_ids)
        position = len(ids) // 2
        ids[position] = 1 + (ids[position] % (VOCAB - 1))
        logits, hidden = recompute(model, prompt, ids)
        logprobs = torch.log_softmax(logits / rollout.temperature, dim=-1)[
            torch.arange(len(ids)), ids
        ].tolist()
        proof = build_fingerprint(hidden, prompt, ids, precision="float32", k=8, chunk_tokens=32)
        return replace(
            rollout, completion_ids=tuple(ids), sampling_logprobs=tuple(logprobs), fingerprint=proof
        )
    if kind == "other_temperature":
        ((ids, _, proof),) = sample_group_with_proofs(
            model,
            prompt,
            seeds=[rollout.seed],
            max_new_tokens=24,
            temperature=1.5 * rollout.temperature,
            end_id=END_ID,
        )
        # The harder lie: log-probabilities restated at the claimed temperature, so only the replay catches it.
        logits, _ = recompute(model, prompt, ids)
        logprobs = torch.log_softmax(logits / rollout.temperature, dim=-1)[
            torch.arange(len(ids)), ids
        ].tolist()
        return replace(
            rollout, completion_ids=tuple(ids), sampling_logprobs=tuple(logprobs), fingerprint=proof
        )
    if kind == "other_seed":
        return replace(rollout, seed=rollout_seed(rollout.seed, 1))
    raise ValueError(
        f"tamper kind {kind!r} is not other_model, edited_tokens, other_temperature or other_seed"
    )


def _draws(model: nn.Module, rollout: Rollout) -> tuple[int, ...]:
    ((ids, _, _),) = sample_group_with_proofs(
        model,
        rollout.prompt_ids,
        seeds=[rollout.seed],
        max_new_tokens=len(rollout.completion_ids),
        temperature=rollout.temperature,
        end_id=END_ID,
    )
    return tuple(ids)


def detection(
    model: nn.Module, impostor: nn.Module, *, num_groups: int = 25, group_size: int = 4
) -> dict[str, Any]:
    """False positives over honest rollouts of every worker variant, false negatives per tampering kind, and
    how many rollouts of a 1%-perturbed copy of ``model`` pass when claimed as float32 or as bfloat16.

    A tampered rollout identical to its honest original (the lie changed nothing, e.g. the same tokens at
    another temperature), or whose claimed seed really draws its tokens, is not counted: there is nothing to
    catch.
    """
    false_positive: Counter[str] = Counter()
    honest_total: Counter[str] = Counter()
    for name, (worker, precision) in worker_variants(model).items():
        verifier = TopkVerifier(num_strikes=10**9)
        # seed 11: other rollouts than the calibration's (seed 0)
        for rollout in sample_rollouts(
            worker, precision, num_groups=num_groups, group_size=group_size, temperature=1.0, seed=11
        ):
            honest_total[name] += 1
            false_positive[name] += not verifier.verify(rollout, model).accepted
    false_negative: Counter[str] = Counter()
    tampered_total: Counter[str] = Counter()
    honest = sample_rollouts(
        model, "float32", num_groups=num_groups, group_size=group_size, temperature=1.0, seed=7
    )
    for kind in ("other_model", "edited_tokens", "other_temperature", "other_seed"):
        verifier = TopkVerifier(num_strikes=10**9)
        for rollout in honest:
            if not rollout.completion_ids:
                continue
            lie = tamper(rollout, kind, model, impostor)
            if lie.completion_ids == rollout.completion_ids and lie.seed == rollout.seed:
                continue
            if kind == "other_seed" and _draws(model, lie) == lie.completion_ids:
                continue  # the claimed seed draws these very tokens: the claim is true
            tampered_total[kind] += 1
            false_negative[kind] += verifier.verify(lie, model).accepted
    perturbed_total: Counter[str] = Counter()
    perturbed_accepted: Counter[str] = Counter()
    perturbed = perturbed_copy(model, 0.01)
    for precision in ("float32", "bfloat16"):
        verifier = TopkVerifier(num_strikes=10**9)
        for rollout in sample_rollouts(
            perturbed, precision, num_groups=num_groups, group_size=group_size, temperature=1.0, seed=13
        ):
            if rollout.completion_ids:
                perturbed_total[precision] += 1
                perturbed_accepted[precision] += verifier.verify(rollout, model).accepted
    return {
        "perturbed_1pct_claimed_as": dict(perturbed_total),
        "perturbed_1pct_accepted": dict(perturbed_accepted),
        "honest": dict(honest_total),
        "false_positives": dict(false_positive),
        "tampered": dict(tampered_total),
        "false_negatives": dict(false_negative),
    }


def _generate_with_proofs(
    model: GPT, prompts: list[tuple[int, ...]], group_size: int, max_new_tokens: int
) -> Any:
    return [
        sample_group_with_proofs(
            model,
            prompt,
            seeds=[rollout_seed(group, i) for i in range(group_size)],
            max_new_tokens=max_new_tokens,
            temperature=1.0,
            end_id=-1,
        )
        for group, prompt in enumerate(prompts)
    ]


@torch.no_grad()
def _generate_plain(model: GPT, prompts: list[tuple[int, ...]], group_size: int, max_new_tokens: int) -> None:
    generator = torch.Generator().manual_seed(0)
    for prompt in prompts:
        tokens = torch.tensor([list(prompt)] * group_size)
        for _ in range(max_new_tokens):
            probs = torch.softmax(model(tokens)[:, -1, :].float(), dim=-1)
            step = torch.multinomial(probs, 1, generator=generator)
            torch.log(probs.gather(1, step))
            tokens = torch.cat([tokens, step], dim=1)


def _cpu_s(function: Any, *args: Any) -> tuple[float, Any]:
    start = time.process_time()
    result = function(*args)
    return time.process_time() - start, result


def proof_overhead(
    model: GPT, *, num_groups: int = 20, group_size: int = 8, max_new_tokens: int = 24, num_repeats: int = 3
) -> dict[str, float]:
    """CPU seconds (medians of ``num_repeats``, the two generators interleaved) of generation with proofs
    (:func:`sample_group_with_proofs`), of building the fingerprints alone, of proving each rollout with a
    separate forward pass (:class:`TopkProver`), and of a multinomial sampler without proofs (the same loop
    with ``torch.multinomial``); process CPU time, not wall time."""
    prompts = [
        tuple(torch.randint(1, VOCAB, (16,), generator=torch.Generator().manual_seed(g)).tolist())
        for g in range(num_groups)
    ]
    hidden = torch.randn(max_new_tokens, model.config.width)
    prover = TopkProver()

    def fingerprints(samples: Any) -> None:
        for prompt, group_samples in zip(prompts, samples, strict=True):
            for ids, _, _ in group_samples:
                build_fingerprint(hidden[: len(ids)], prompt, ids, precision="float32", k=8, chunk_tokens=32)

    def separate(samples: Any) -> None:
        for prompt, group_samples in zip(prompts, samples, strict=True):
            for ids, _, _ in group_samples:
                prover.prove(model, prompt, tuple(ids))

    runs: dict[str, list[float]] = {"with_proofs": [], "plain": [], "fingerprints": [], "separate": []}
    for _ in range(num_repeats):
        seconds, samples = _cpu_s(_generate_with_proofs, model, prompts, group_size, max_new_tokens)
        runs["with_proofs"].append(seconds)
        runs["plain"].append(_cpu_s(_generate_plain, model, prompts, group_size, max_new_tokens)[0])
        runs["fingerprints"].append(_cpu_s(fingerprints, samples)[0])
        runs["separate"].append(_cpu_s(separate, samples)[0])
    median = {name: sorted(values)[len(values) // 2] for name, values in runs.items()}
    return {
        "generation_with_proofs_cpu_s": median["with_proofs"],
        "fingerprints_cpu_s": median["fingerprints"],
        "plain_multinomial_cpu_s": median["plain"],
        "separate_prover_cpu_s": median["separate"],
        "fingerprint_share": median["fingerprints"] / median["with_proofs"],
        "separate_prover_share": median["separate"] / median["with_proofs"],
        "total_overhead_vs_plain": median["with_proofs"] / median["plain"] - 1.0,
    }


def run(quick: bool) -> dict[str, Any]:
    """Calibration, detection and proof overhead at the benchmark's size (``quick``: fewer rollouts)."""
    model, impostor = make_policy(0), make_policy(1)
    groups = 10 if quick else 40
    return {
        "calibration": calibrate(model, num_groups=groups),
        "detection": detection(model, impostor, num_groups=10 if quick else 50),
        "overhead": proof_overhead(model, num_groups=5 if quick else 20),
    }


def markdown(result: dict[str, Any]) -> str:
    """The results section of :func:`run`."""
    lines = [
        "### Rollout verification",
        "",
        "Honest deviation from a float32 verifier (worst over the calibration rollouts):",
        "",
        "| worker | max rel. error | mean rel. error | min rank ratio | Gumbel margin | log-prob error |",
        "|---|---|---|---|---|---|",
    ]
    for name, worst in result["calibration"].items():
        lines.append(
            f"| {name} | {worst['max_rel_error']:.4f} | {worst['mean_rel_error']:.4f} | "
            f"{worst['min_rank_ratio']:.4f} | {worst['margin']:.4f} | {worst['logprob']:.4f} |"
        )
    detected, overhead = result["detection"], result["overhead"]
    honest = ", ".join(f"{k}: {detected['false_positives'][k]}/{n}" for k, n in detected["honest"].items())
    lies = ", ".join(f"{k}: {detected['false_negatives'][k]}/{n}" for k, n in detected["tampered"].items())
    perturbed = ", ".join(
        f"as {k}: {detected['perturbed_1pct_accepted'][k]}/{n}"
        for k, n in detected["perturbed_1pct_claimed_as"].items()
    )
    lines += [
        "",
        f"False positives (honest rejected): {honest}. False negatives (tampered accepted): {lies}. "
        f"Rollouts of a 1%-perturbed model accepted: {perturbed}.",
        "",
        f"Proof overhead: fingerprints {overhead['fingerprint_share']:.2%} of generation; generation with proofs "
        f"(replayable sampling included) {overhead['total_overhead_vs_plain']:+.1%} CPU against a plain multinomial "
        f"sampler; a separate proving forward pass per rollout would cost {overhead['separate_prover_share']:.1%}.",
    ]
    return "\n".join(lines)
