"""Tests for the byte-level GPT and its pipeline stages."""

from __future__ import annotations

import pytest
import torch

from farsync.models import GPT, GPTConfig, count_parameters, gpt_stage

SMALL = GPTConfig(num_layers=3, width=32, num_heads=2, context_length=16, vocab_size=256)


def test_forward_returns_logits_per_position() -> None:
    # Prepare
    torch.manual_seed(0)
    model = GPT(SMALL)
    tokens = torch.randint(0, 256, (2, 10))
    # Execute
    logits = model(tokens)
    # Assert
    assert logits.shape == (2, 10, 256)
    assert torch.isfinite(logits).all()


def test_changing_a_future_token_leaves_earlier_logits_unchanged() -> None:
    # Prepare
    torch.manual_seed(0)
    model = GPT(SMALL)
    tokens = torch.randint(0, 256, (1, 12))
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 256
    # Execute
    original_logits, changed_logits = model(tokens), model(changed)
    # Assert
    torch.testing.assert_close(original_logits[:, :7], changed_logits[:, :7], rtol=0, atol=0)
    assert not torch.allclose(original_logits[:, 7:], changed_logits[:, 7:])


def test_default_parameter_count() -> None:
    # Prepare: embeddings 256*128 + 128*128; per block 2 norms, qkv, proj, 4x MLP; head norm + linear.
    block = 2 * 256 + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128)
    expected = 256 * 128 + 128 * 128 + 4 * block + 256 + 128 * 256 + 256
    # Execute
    count = count_parameters(GPT())
    # Assert
    assert count == expected == 875_520


def test_init_is_deterministic_under_manual_seed() -> None:
    # Prepare / Execute
    torch.manual_seed(3)
    first = GPT(SMALL)
    torch.manual_seed(3)
    second = GPT(SMALL)
    # Assert
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert torch.all(first.blocks[0].attn.qkv.bias == 0)
    assert 0.015 < first.head.linear.weight.std().item() < 0.025


@pytest.mark.parametrize("num_stages", [1, 2, 3])
def test_stages_composed_equal_full_model(num_stages: int) -> None:
    # Prepare
    torch.manual_seed(0)
    model = GPT(SMALL)
    tokens = torch.randint(0, 256, (2, 16))
    stages = [gpt_stage(model, stage, num_stages) for stage in range(num_stages)]
    # Execute
    hidden = tokens
    for stage in stages:
        hidden = stage(hidden)
    # Assert
    assert torch.equal(hidden, model(tokens))
    assert sum(len(stage.blocks) for stage in stages) == SMALL.num_layers


def test_stages_split_blocks_evenly_and_share_modules() -> None:
    # Prepare
    model = GPT(GPTConfig(num_layers=5, width=16, num_heads=2, context_length=8))
    # Execute
    stages = [gpt_stage(model, stage, 3) for stage in range(3)]
    # Assert
    assert [len(stage.blocks) for stage in stages] == [2, 2, 1]
    assert stages[0].embed is model.embed and stages[1].embed is None
    assert stages[2].head is model.head and stages[0].head is None
    assert stages[1].blocks[0] is model.blocks[2]


def test_stage_errors() -> None:
    # Prepare
    model = GPT(SMALL)
    # Execute / Assert
    with pytest.raises(ValueError, match="num_stages"):
        gpt_stage(model, 0, 4)
    with pytest.raises(ValueError, match="stage"):
        gpt_stage(model, 3, 3)


def test_config_rejects_width_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(width=130, num_heads=4)


def test_sequence_longer_than_context_is_rejected() -> None:
    # Prepare
    model = GPT(SMALL)
    # Execute / Assert
    with pytest.raises(ValueError, match="context_length 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
