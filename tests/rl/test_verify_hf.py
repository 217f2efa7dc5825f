"""Rollout verification on a Hugging Face model behind farsync's HFCausalLM wrapper."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")

from farsync.models.hf import build_hf_model  # noqa: E402
from farsync.rl.verify import TopkVerifier, sample_group_with_proofs  # noqa: E402
from farsync.rl.verify_bench import rollouts_from_samples  # noqa: E402
from farsync.rl.verify_sampling import rollout_seed  # noqa: E402

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


def test_honest_llama_rollouts_pass_and_a_lie_is_caught() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_hf_model("llama", TINY, None, vocab_size=48, context_length=48, seed=0).eval()
        prompt = (5, 6, 7, 8, 9, 10)
        seeds = [rollout_seed(3, i) for i in range(3)]
        samples = sample_group_with_proofs(
            model, prompt, seeds=seeds, max_new_tokens=12, temperature=1.0, end_id=-1
        )
        rollouts = rollouts_from_samples(prompt, seeds, samples, temperature=1.0, worker_id="hf")
        verifier = TopkVerifier()
        assert all(verifier.verify(r, model).accepted for r in rollouts)
        lie = replace(rollouts[0], seed=rollouts[1].seed)
        assert not TopkVerifier().verify(lie, model).accepted
    finally:
        torch.set_num_threads(before)
