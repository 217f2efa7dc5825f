"""The policy's forward uses: sampling completions with their log-probabilities, scoring given completions,
and held-out pass@1.

This module owns the three ways RL runs a language model: :func:`sample_group` (an inference worker draws
``group_size`` completions of one prompt at a temperature, recording each token's log-probability),
:func:`completion_logprobs` (the trainer recomputes the same log-probabilities with gradients) and
:func:`pass_at_1` (greedy decoding on a held-out set, scored by the task's reward). Completions end with the
tokenizer's end token (included in the completion, so the policy learns to stop) or at ``max_new_tokens``.

Any model that maps ``[B, T]`` token ids to ``[B, T, V]`` logits works: farsync's GPT or a Hugging Face
causal LM behind :class:`farsync.models.hf.HFCausalLM` (:func:`build_policy` makes either). Sampling uses an explicit ``torch.Generator`` so a rollout's ``seed`` replays it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from farsync.models.gpt import GPT, GPTConfig
from farsync.rl.tasks import CharTokenizer, Problem, RewardFn, safe_reward

__all__ = ["build_policy", "completion_logprobs", "pass_at_1", "sample_group", "sft_loss"]


def build_policy(
    *,
    num_layers: int,
    width: int,
    num_heads: int,
    context_length: int,
    vocab_size: int,
    kind: str = "gpt",
    architecture: str = "llama",
    num_kv_heads: int = 0,
    intermediate_size: int = 0,
    tie_embeddings: bool = False,
) -> nn.Module:
    """A policy sized for a task's vocabulary: farsync's GPT (``kind="gpt"``), or a Hugging Face causal LM
    of ``architecture`` built from the same size keys (``kind="hf"``, randomly initialised; needs
    ``transformers``). Both map token ids ``[B, T]`` to logits ``[B, T, vocab_size]``."""
    if kind == "hf":
        from farsync.models.hf import build_hf_model

        size: dict[str, int | bool] = {
            "hidden_size": width,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads or num_heads,
            "tie_embeddings": tie_embeddings,
        }
        if intermediate_size:
            size["intermediate_size"] = intermediate_size
        return build_hf_model(architecture, size, None, vocab_size, context_length)
    return GPT(
        GPTConfig(
            num_layers=num_layers,
            width=width,
            num_heads=num_heads,
            context_length=context_length,
            vocab_size=vocab_size,
        )
    )


@torch.no_grad()
def sample_group(
    model: nn.Module,
    prompt_ids: Sequence[int],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    end_id: int = CharTokenizer.END_ID,
) -> list[tuple[list[int], list[float]]]:
    """``group_size`` completions of one prompt, each as ``(token ids, log-probability per token)``.

    Tokens are drawn from ``softmax(logits / temperature)``; a completion stops after its end token.
    """
    tokens = torch.tensor([list(prompt_ids)] * group_size, dtype=torch.long)
    finished = torch.zeros(group_size, dtype=torch.bool)
    chosen: list[Tensor] = []
    logprobs: list[Tensor] = []
    for _ in range(max_new_tokens):
        logits = model(tokens)[:, -1, :].float() / temperature
        log_dist = F.log_softmax(logits, dim=-1)
        step = torch.multinomial(log_dist.exp(), 1, generator=generator).squeeze(1)
        chosen.append(step)
        logprobs.append(log_dist.gather(1, step[:, None]).squeeze(1))
        finished = finished | (step == end_id)
        tokens = torch.cat([tokens, step[:, None]], dim=1)
        if bool(finished.all()):
            break
    results: list[tuple[list[int], list[float]]] = []
    for row in range(group_size):
        ids = [int(t[row]) for t in chosen]
        values = [float(v[row]) for v in logprobs]
        length = ids.index(end_id) + 1 if end_id in ids else len(ids)
        results.append((ids[:length], values[:length]))
    return results


def completion_logprobs(
    model: nn.Module,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    temperature: float,
    pad_id: int = CharTokenizer.END_ID,
) -> tuple[Tensor, Tensor]:
    """Log-probabilities of each completion token given its prompt, as ``(logprobs [B, L], mask [B, L])``.

    ``sequences`` holds ``(prompt_ids, completion_ids)`` pairs; ``L`` is the longest completion and ``mask``
    marks real completion tokens. Sequences are right-padded (the GPT is causal, so padding after a
    sequence does not change its log-probabilities). Gradients flow when called outside ``no_grad``.
    """
    width = max(len(p) + len(c) for p, c in sequences)
    longest = max(max(len(c) for _, c in sequences), 1)
    padded = [list(p) + list(c) + [pad_id] * (width - len(p) - len(c)) for p, c in sequences]
    tokens = torch.tensor(padded, dtype=torch.long)
    log_dist = F.log_softmax(model(tokens).float() / temperature, dim=-1)
    # Position t predicts token t + 1: the logits for completion token j sit at len(prompt) + j - 1.
    token_logprobs = log_dist[:, :-1, :].gather(2, tokens[:, 1:, None]).squeeze(2)
    rows: list[Tensor] = []
    masks: list[Tensor] = []
    for row, (prompt, completion) in enumerate(sequences):
        start = len(prompt) - 1
        values = token_logprobs[row, start : start + len(completion)]
        rows.append(F.pad(values, (0, longest - len(completion))))
        masks.append(torch.arange(longest) < len(completion))
    return torch.stack(rows), torch.stack(masks).float()


def sft_loss(model: nn.Module, problems: Sequence[Problem], tokenizer: CharTokenizer) -> Tensor:
    """Mean next-token cross-entropy on the answers (and end token) of ``problems``, prompts not scored."""
    pairs = [(tokenizer.encode(p.prompt), tokenizer.encode(p.answer) + [tokenizer.END_ID]) for p in problems]
    logprobs, mask = completion_logprobs(model, pairs, temperature=1.0)
    return -(logprobs * mask).sum() / mask.sum()


@torch.no_grad()
def pass_at_1(
    model: nn.Module,
    problems: Sequence[Problem],
    reward: RewardFn,
    tokenizer: CharTokenizer,
    *,
    max_new_tokens: int,
    batch_size: int = 256,
) -> float:
    """Fraction of ``problems`` whose greedy completion earns reward >= 1 (prompts batched by length)."""
    was_training = model.training
    model.eval()
    by_length: dict[int, list[Problem]] = {}
    for problem in problems:
        by_length.setdefault(len(problem.prompt), []).append(problem)
    solved = 0
    for same_length in by_length.values():
        for start in range(0, len(same_length), batch_size):
            chunk = same_length[start : start + batch_size]
            tokens = torch.tensor([tokenizer.encode(p.prompt) for p in chunk], dtype=torch.long)
            generated: list[Tensor] = []
            for _ in range(max_new_tokens):
                step = model(tokens)[:, -1, :].argmax(dim=-1)
                generated.append(step)
                tokens = torch.cat([tokens, step[:, None]], dim=1)
            for row, problem in enumerate(chunk):
                text = tokenizer.decode([int(t[row]) for t in generated])
                value, _ = safe_reward(reward, problem.prompt, text)
                solved += value >= 1.0
    model.train(was_training)
    return solved / max(len(problems), 1)
