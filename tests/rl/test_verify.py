"""Rollout verification: fingerprint numerics and format, replayable sampling, honest and tampered rollouts."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch

from farsync.rl.messages import Rollout
from farsync.rl.proofs import Prover, Verifier
from farsync.rl.verify import DEFAULT_TOLERANCES, Tolerance, TopkProver, TopkVerifier, recompute
from farsync.rl.verify_bench import make_policy, perturbed_copy, sample_rollouts, tamper, worker_variants
from farsync.rl.verify_fingerprint import (
    FingerprintRejected,
    build_fingerprint,
    capture_final_hidden,
    compare_fingerprint,
    parse_fingerprint,
)
from farsync.rl.verify_sampling import (
    NOISE_BLOCK,
    GumbelSampler,
    check_sampling,
    gumbel_noise,
    gumbel_noise_steps,
    rollout_seed,
    sample_tokens,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # As farsync's runners do: intra-op threads spin badly on a shared, loaded machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return make_policy(0, width=32, num_layers=2)


@pytest.fixture(scope="module")
def honest(model: torch.nn.Module) -> list[Rollout]:
    rollouts = sample_rollouts(model, "float32", num_groups=3, group_size=4, temperature=1.0, seed=1)
    return [r for r in rollouts if len(r.completion_ids) >= 4]


# ------------------------------------------------------------------------------------------ fingerprint
def test_fingerprint_keeps_the_top_k_magnitudes_per_chunk() -> None:
    hidden = torch.tensor(
        [
            [0.1, -3.0, 0.2],
            [2.0, 0.0, -0.5],
            [0.3, 0.4, -7.0],
        ]  # positions 0 and 1: chunk 0; position 2: chunk 1
    )
    data = build_fingerprint(hidden, [5, 6], [1, 2, 3], precision="float32", k=2, chunk_tokens=2)
    fingerprint = parse_fingerprint(data, [5, 6], [1, 2, 3])
    # chunk 0 flattened: [0.1, -3.0, 0.2, 2.0, 0.0, -0.5] -> |.| largest at 1 (-3.0) and 3 (2.0)
    assert fingerprint.indices[0].tolist() == [1, 3] and fingerprint.values[0].tolist() == [-3.0, 2.0]
    # chunk 1: [0.3, 0.4, -7.0] -> 2 (-7.0), 1 (0.4 rounds to bfloat16 0.400390625)
    assert fingerprint.indices[1].tolist() == [2, 1]
    assert fingerprint.values[1].tolist() == [-7.0, pytest.approx(0.400390625)]
    # 18-byte header (magic 4, precision 1, index size 1, k 2, chunk 2, positions 4, width 4) + 32-byte digest + 2 chunks * 2 values * (2-byte index + 2-byte value)
    assert len(data) == 18 + 32 + 16
    errors = compare_fingerprint(fingerprint, hidden)
    assert errors.max_rel_error == pytest.approx(abs(0.400390625 - 0.4) / 0.4, rel=1e-4)
    assert errors.min_rank_ratio == pytest.approx(1.0)


def test_compare_fingerprint_measures_relative_error_and_rank() -> None:
    hidden = torch.tensor([[4.0, 1.0, -2.0, 0.5]])
    fingerprint = parse_fingerprint(
        build_fingerprint(hidden, [1], [2], precision="float32", k=2, chunk_tokens=1), [1], [2]
    )
    moved = torch.tensor([[4.4, 1.0, -2.0, 3.0]])  # value 0 off by 10%; index 2 no longer in the top 2
    errors = compare_fingerprint(fingerprint, moved)
    assert errors.max_rel_error == pytest.approx(0.4 / 4.4, rel=1e-5)
    assert errors.mean_rel_error == pytest.approx(0.4 / 4.4 / 2, rel=1e-5)
    assert errors.min_rank_ratio == pytest.approx(2.0 / 3.0, rel=1e-5)


def test_fingerprint_is_bound_to_its_tokens_and_checked_strictly() -> None:
    hidden = torch.randn(5, 8)
    data = build_fingerprint(hidden, [1, 2], [3, 4, 5, 6, 7], precision="bfloat16", k=4, chunk_tokens=2)
    assert parse_fingerprint(data, [1, 2], [3, 4, 5, 6, 7]).precision == "bfloat16"
    with pytest.raises(FingerprintRejected, match="digest"):
        parse_fingerprint(data, [1, 2], [3, 4, 5, 6, 8])
    with pytest.raises(FingerprintRejected, match="digest"):
        parse_fingerprint(data, [1, 9], [3, 4, 5, 6, 7])
    with pytest.raises(FingerprintRejected, match="covers 5 positions"):
        parse_fingerprint(data, [1, 2], [3, 4, 5, 6])
    with pytest.raises(FingerprintRejected, match="body"):
        parse_fingerprint(data[:-1], [1, 2], [3, 4, 5, 6, 7])
    with pytest.raises(FingerprintRejected, match="header"):
        parse_fingerprint(b"XXXX" + data[4:], [1, 2], [3, 4, 5, 6, 7])
    with pytest.raises(FingerprintRejected, match="shorter"):
        parse_fingerprint(b"", [1], [])


def test_hidden_capture_does_not_change_the_model(model: torch.nn.Module) -> None:
    tokens = torch.randint(1, 44, (2, 9))
    with torch.no_grad():
        plain = model(tokens)
        with capture_final_hidden(model) as captured:
            hooked = model(tokens)
        expected = model.head.norm(model.blocks[1](model.blocks[0](model.embed(tokens))))
    assert torch.equal(plain, hooked) and torch.allclose(captured[0], expected)
    assert not model.head.norm._forward_hooks


# --------------------------------------------------------------------------------------------- sampling
def test_sample_tokens_is_gumbel_argmax_and_batch_independent() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.5]])
    seeds = [rollout_seed(7, 0), rollout_seed(7, 1)]
    drawn = sample_tokens(logits, 0.5, seeds, step=3)
    for row in range(2):
        expected = int((logits[row].double() / 0.5 + gumbel_noise(seeds[row], 3, 3)).argmax())
        assert int(drawn[row]) == expected
        assert int(sample_tokens(logits[row : row + 1], 0.5, seeds[row : row + 1], step=3)[0]) == expected
    assert sample_tokens(logits, 0.0, seeds, step=0).tolist() == [2, 0]
    assert rollout_seed(7, 0) != rollout_seed(7, 1)


def test_the_step_by_step_sampler_draws_the_same_noise_across_blocks() -> None:
    seeds = [rollout_seed(1, i) for i in range(3)]
    logits = torch.randn(3, 44)
    sampler = GumbelSampler(seeds, 44)
    steps = range(NOISE_BLOCK - 2, NOISE_BLOCK + 3)  # crosses into the second noise block
    assert all(torch.equal(sampler(logits, 0.9, j), sample_tokens(logits, 0.9, seeds, j)) for j in steps)
    table = gumbel_noise_steps(seeds[0], NOISE_BLOCK + 3, 44)
    assert torch.equal(table[NOISE_BLOCK + 1], gumbel_noise(seeds[0], NOISE_BLOCK + 1, 44))
    assert not torch.equal(table[0], table[NOISE_BLOCK])


def test_sample_tokens_draws_from_the_tempered_softmax() -> None:
    logits = torch.tensor([[math.log(1.0), math.log(2.0), math.log(5.0)]])
    temperature = 2.0
    draws = torch.tensor([int(sample_tokens(logits, temperature, [seed], 0)[0]) for seed in range(3000)])
    frequencies = torch.bincount(draws, minlength=3).double() / 3000
    expected = torch.softmax(logits[0].double() / temperature, dim=0)  # proportional to sqrt(1, 2, 5)
    assert torch.allclose(frequencies, expected, atol=0.03)


def test_check_sampling_accepts_the_replay_and_rejects_others() -> None:
    logits = torch.randn(6, 10) * 3
    seed, temperature = 11, 0.8
    tokens = [int(sample_tokens(logits[j : j + 1], temperature, [seed], j)[0]) for j in range(6)]
    logprobs = torch.log_softmax(logits / temperature, -1)[torch.arange(6), tokens].tolist()
    ok = check_sampling(logits, tokens, logprobs, temperature, seed, max_margin=1e-6, max_logprob_error=1e-6)
    assert ok.ok and ok.worst_margin == 0.0 and ok.worst_logprob_error < 1e-6
    edited = list(tokens)
    edited[2] = (edited[2] + 1) % 10
    bad = check_sampling(logits, edited, logprobs, temperature, seed, max_margin=1e-6, max_logprob_error=10.0)
    assert not bad.ok and "token 2" in bad.reason
    # the margin is the score gap in logit units: T * (max - claimed)
    scores = logits[2].double() / temperature + gumbel_noise(seed, 2, 10)
    assert bad.worst_margin == pytest.approx(float(scores.max() - scores[edited[2]]) * temperature)
    wrong_t = check_sampling(logits, tokens, logprobs, 1.2, seed, max_margin=100.0, max_logprob_error=1e-3)
    assert not wrong_t.ok and "log-probability" in wrong_t.reason


# ------------------------------------------------------------------------------------- verifier, honest
def test_interfaces(model: torch.nn.Module) -> None:
    assert isinstance(TopkProver(), Prover) and isinstance(TopkVerifier(), Verifier)


@pytest.mark.parametrize("variant", ["float32 batched", "bfloat16 weights", "bfloat16 autocast"])
def test_honest_rollouts_pass(model: torch.nn.Module, variant: str) -> None:
    worker, precision = worker_variants(model)[variant]
    rollouts = sample_rollouts(worker, precision, num_groups=2, group_size=4, temperature=0.8, seed=2)
    verifier = TopkVerifier()
    verdicts = [verifier.verify(rollout, model) for rollout in rollouts]
    assert all(v.accepted for v in verdicts), [v.reason for v in verdicts]
    assert verifier.counts["verified"] == sum(1 for r in rollouts) and not verifier.excluded


def test_prover_matches_the_sampler_fingerprint(model: torch.nn.Module, honest: list[Rollout]) -> None:
    rollout = honest[0]
    proof = TopkProver().prove(model, rollout.prompt_ids, rollout.completion_ids)
    replaced = replace(rollout, fingerprint=proof)
    assert TopkVerifier().verify(replaced, model).accepted
    claimed = parse_fingerprint(rollout.fingerprint, rollout.prompt_ids, rollout.completion_ids)
    separate = parse_fingerprint(proof, rollout.prompt_ids, rollout.completion_ids)
    assert [i.tolist() for i in claimed.indices] == [i.tolist() for i in separate.indices]


def test_bfloat16_rollouts_fail_under_float32_tolerances(model: torch.nn.Module) -> None:
    """The tolerance is chosen by the declared precision: bfloat16 activations claimed as float32 are caught."""
    worker, _ = worker_variants(model)["bfloat16 weights"]
    rollouts = sample_rollouts(worker, "float32", num_groups=2, group_size=4, temperature=0.8, seed=2)
    verifier = TopkVerifier(num_strikes=100)
    assert not any(verifier.verify(r, model).accepted for r in rollouts if len(r.completion_ids) >= 4)


# ------------------------------------------------------------------------------------ verifier, tampered
@pytest.mark.parametrize("kind", ["other_model", "edited_tokens", "other_temperature", "other_seed"])
def test_tampered_rollouts_are_caught(model: torch.nn.Module, honest: list[Rollout], kind: str) -> None:
    impostor = make_policy(1, width=32, num_layers=2)
    verifier = TopkVerifier(num_strikes=100)
    caught = 0
    for rollout in honest:
        assert TopkVerifier().verify(rollout, model).accepted
        lie = tamper(rollout, kind, model, impostor)
        if lie.completion_ids == rollout.completion_ids and lie.seed == rollout.seed:
            continue  # the lie changed nothing
        caught += 1
        verdict = verifier.verify(lie, model)
        assert not verdict.accepted, kind
    assert caught >= 3


def test_old_temperature_logprobs_are_caught(model: torch.nn.Module, honest: list[Rollout]) -> None:
    rollout = honest[0]
    logits, _ = recompute(model, rollout.prompt_ids, rollout.completion_ids)
    ids = list(rollout.completion_ids)
    logprobs = torch.log_softmax(logits / 1.5, -1)[torch.arange(len(ids)), ids].tolist()
    verdict = TopkVerifier().verify(replace(rollout, sampling_logprobs=tuple(logprobs)), model)
    assert not verdict.accepted and "log-probability" in verdict.reason


def test_a_caught_worker_is_excluded_and_logged(
    model: torch.nn.Module, honest: list[Rollout], caplog: pytest.LogCaptureFixture
) -> None:
    verifier = TopkVerifier(num_strikes=1)
    liar = replace(honest[0], worker_id="liar", seed=honest[0].seed + 1)
    with caplog.at_level(logging.WARNING, logger="farsync.rl.verify"):
        assert not verifier.verify(liar, model).accepted
    assert "liar" in verifier.excluded and "worker liar excluded" in caplog.text
    later = replace(honest[1], worker_id="liar")  # honest, but from an excluded worker
    verdict = verifier.verify(later, model)
    assert not verdict.accepted and "excluded" in verdict.reason
    assert verifier.verify(honest[1], model).accepted  # other workers are unaffected


def test_a_fraction_of_rollouts_is_checked(model: torch.nn.Module, honest: list[Rollout]) -> None:
    verifier = TopkVerifier(check_fraction=0.5, seed=3)
    lies = [replace(r, seed=r.seed + 1, worker_id=f"w{i}") for i, r in enumerate(honest * 4)]
    accepted = sum(verifier.verify(lie, model).accepted for lie in lies)
    assert verifier.counts["unchecked"] == accepted and 0 < accepted < len(lies)
    # the format and digest are checked for every rollout, sampled or not
    broken = replace(honest[0], worker_id="x", completion_ids=(1,) + honest[0].completion_ids[1:])
    assert all(not TopkVerifier(check_fraction=1e-9, seed=s).verify(broken, model).accepted for s in range(5))


def test_tolerances_are_what_is_compared(model: torch.nn.Module, honest: list[Rollout]) -> None:
    """Tightening any one tolerance below the honest deviation rejects; loosening all accepts a small lie."""
    rollout = honest[0]
    base = DEFAULT_TOLERANCES["float32"]
    worker, _ = worker_variants(model)["bfloat16 weights"]
    (bf16,) = [
        r
        for r in sample_rollouts(worker, "bfloat16", num_groups=1, group_size=4, temperature=0.8, seed=2)
        if len(r.completion_ids) >= 4
    ][:1]
    too_tight = {
        "max_rel_error": replace(base, max_rel_error=1e-9),
        "mean_rel_error": replace(base, mean_rel_error=1e-9),
        "min_rank_ratio": replace(base, min_rank_ratio=1.5),
    }
    for name, tolerance in too_tight.items():
        assert not TopkVerifier(tolerances={"float32": tolerance}).verify(rollout, model).accepted, name
    sampling_tight = replace(DEFAULT_TOLERANCES["bfloat16"], max_margin=0.0, max_logprob_error=0.0)
    assert TopkVerifier().verify(bf16, model).accepted
    assert not TopkVerifier(tolerances={"bfloat16": sampling_tight}).verify(bf16, model).accepted
    loose = Tolerance(
        max_rel_error=1e9, mean_rel_error=1e9, min_rank_ratio=0.0, max_margin=1e9, max_logprob_error=1e9
    )
    lie = replace(rollout, seed=rollout.seed + 1)
    assert TopkVerifier(tolerances={"float32": loose}).verify(lie, model).accepted
    assert not TopkVerifier().verify(lie, model).accepted


def test_a_perturbed_copy_of_the_model_is_caught_in_float32(model: torch.nn.Module) -> None:
    """A worker that samples with slightly different weights (1% noise, e.g. a stale or fine-tuned copy)."""
    rollouts = sample_rollouts(
        perturbed_copy(model, 0.01), "float32", num_groups=2, group_size=4, temperature=1.0
    )
    verifier = TopkVerifier(num_strikes=100)
    assert not any(verifier.verify(r, model).accepted for r in rollouts if r.completion_ids)


def test_without_replay_a_multinomial_sampler_passes_on_its_log_probabilities(model: torch.nn.Module) -> None:
    prompt = (3, 4, 5, 6, 7, 8, 9, 10)
    generator = torch.Generator().manual_seed(0)
    tokens, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(12):
            log_dist = torch.log_softmax(model(torch.tensor([tokens]))[0, -1] / 0.8, dim=-1)
            token = int(torch.multinomial(log_dist.exp(), 1, generator=generator))
            tokens.append(token)
            logprobs.append(float(log_dist[token]))
    completion = tuple(tokens[len(prompt) :])
    rollout = Rollout(
        task_id="t/0",
        group_id="g",
        group_size=1,
        prompt_ids=prompt,
        completion_ids=completion,
        sampling_logprobs=tuple(logprobs),
        reward=0.0,
        policy_version=0,
        worker_id="w",
        seed=0,
        temperature=0.8,
        fingerprint=TopkProver().prove(model, prompt, completion),
    )
    assert TopkVerifier(replay_sampling=False).verify(rollout, model).accepted
    verdict = TopkVerifier().verify(rollout, model)
    assert not verdict.accepted and "seed and temperature" in verdict.reason
    at_other_temperature = replace(rollout, temperature=1.0)
    assert not TopkVerifier(replay_sampling=False).verify(at_other_temperature, model).accepted
