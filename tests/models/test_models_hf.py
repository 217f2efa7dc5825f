"""Tests for building Hugging Face causal LMs from a local description (farsync.models.hf)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from farsync.models.hf import (  # noqa: E402
    SMALL_LLAMA_SIZE,
    HFCausalLM,
    HFModelError,
    build_hf_model,
    check_hf_model_spec,
    count_parameters,
    estimate_num_parameters,
)

pytestmark = pytest.mark.usefixtures("private_cache")
"""Tokenizers and token caches go to each test's own directory (see tests/conftest.py)."""

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_llama"
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral", "gpt2"])
def test_tiny_model_maps_ids_to_logits_with_hf_parameters(architecture: str) -> None:
    # Prepare
    size = dict(TINY, num_kv_heads=4) if architecture == "gpt2" else TINY
    x = torch.randint(0, 300, (2, 16))
    # Execute
    model = build_hf_model(architecture, size, None, vocab_size=300, context_length=16, seed=0)
    logits = model(x)
    # Assert
    assert isinstance(model, HFCausalLM) and model.training
    assert logits.shape == (2, 16, 300) and logits.dtype == torch.float32
    assert model.config.model_type == architecture
    assert {id(p) for p in model.parameters()} == {id(p) for p in model.hf_model.parameters()}
    expected = estimate_num_parameters(check_hf_model_spec(architecture, size, None, 300, 16))
    assert count_parameters(model) == expected > 0


def test_logits_are_causal_and_gradients_reach_every_parameter() -> None:
    # Prepare
    model = build_hf_model("llama", TINY, None, vocab_size=300, context_length=16, seed=1)
    x = torch.randint(0, 300, (2, 16))
    changed = x.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 300
    # Execute
    logits = model(x)
    logits_changed = model(changed)
    F.cross_entropy(logits.reshape(-1, 300), x.roll(-1, 1).reshape(-1)).backward()  # type: ignore[no-untyped-call]
    # Assert: positions before the change are unaffected, the changed one is.
    torch.testing.assert_close(logits[:, :10], logits_changed[:, :10])
    assert not torch.allclose(logits[:, 10], logits_changed[:, 10])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_seed_gives_identical_weights_and_leaves_global_rng_alone() -> None:
    # Prepare
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    # Execute
    first = build_hf_model("qwen2", TINY, None, vocab_size=64, context_length=8, seed=5)
    draw = torch.rand(3)
    second = build_hf_model("qwen2", TINY, None, vocab_size=64, context_length=8, seed=5)
    other = build_hf_model("qwen2", TINY, None, vocab_size=64, context_length=8, seed=6)
    # Assert
    assert torch.equal(draw, expected_draw)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(
        first.state_dict()["hf_model.lm_head.weight"], other.state_dict()["hf_model.lm_head.weight"]
    )


def test_too_long_input_is_refused() -> None:
    model = build_hf_model("llama", TINY, None, vocab_size=32, context_length=8, seed=0)
    with pytest.raises(ValueError, match="exceeds context_length 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_default_sizes_and_small_preset() -> None:
    # Execute
    spec = check_hf_model_spec("llama", {"hidden_size": 48, "num_layers": 1, "num_heads": 4}, None, 100, 8)
    gpt2 = check_hf_model_spec("gpt2", {"hidden_size": 48, "num_layers": 1, "num_heads": 4}, None, 100, 8)
    small = check_hf_model_spec("llama", SMALL_LLAMA_SIZE, None, 4096, 256)
    # Assert
    assert spec.size["intermediate_size"] == 128 and spec.size["num_kv_heads"] == 4
    assert spec.size["tie_embeddings"] is False and gpt2.size["tie_embeddings"] is True
    assert gpt2.size["intermediate_size"] == 192
    assert 10_000_000 <= estimate_num_parameters(small) <= 20_000_000


@pytest.mark.parametrize(
    ("architecture", "size", "match"),
    [
        ("bert", TINY, "unknown architecture 'bert'; allowed: llama, qwen2, mistral, gpt2"),
        ("llama", {"hidden_size": 32, "num_layers": 2}, r"size\.num_heads"),
        ("llama", dict(TINY, width=3), r"unknown size key\(s\) size\.width; allowed: hidden_size"),
        ("llama", dict(TINY, num_heads=5), r"hidden_size \(32\) must be divisible by size\.num_heads \(5\)"),
        (
            "llama",
            dict(TINY, num_kv_heads=3),
            r"num_heads \(4\) must be divisible by size\.num_kv_heads \(3\)",
        ),
        ("gpt2", TINY, r"must equal size\.num_heads \(4\) for gpt2"),
        ("llama", dict(TINY, num_layers=0), r"size\.num_layers must be a positive integer, got 0"),
        ("llama", dict(TINY, tie_embeddings="yes"), r"size\.tie_embeddings must be true or false"),
    ],
)
def test_bad_architecture_descriptions_name_the_key(
    architecture: str, size: dict[str, object], match: str
) -> None:
    with pytest.raises(HFModelError, match=match):
        check_hf_model_spec(architecture, size, None, 100, 8)


def test_exactly_one_source_is_required(tmp_path: Path) -> None:
    with pytest.raises(HFModelError, match="exactly one of architecture"):
        check_hf_model_spec(None, None, None, 100, 8)
    with pytest.raises(HFModelError, match="exactly one of architecture"):
        check_hf_model_spec("llama", TINY, tmp_path, 100, 8)
    assert issubclass(HFModelError, ValueError)


def test_bad_hf_paths_name_the_path_and_what_is_expected(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(
        HFModelError, match=r"hf_path '.*nope' is not a local directory; expected a directory"
    ):
        check_hf_model_spec(None, None, missing, 100, 8)
    with pytest.raises(HFModelError, match="has no config.json"):
        check_hf_model_spec(None, None, tmp_path, 100, 8)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HFModelError, match="config.json is not valid JSON"):
        check_hf_model_spec(None, None, tmp_path, 100, 8)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 3}))
    with pytest.raises(HFModelError, match="'model_type' string"):
        check_hf_model_spec(None, None, tmp_path, 100, 8)


def test_fixture_limits_are_checked() -> None:
    with pytest.raises(HFModelError, match=r"vocab_size \(300\) is smaller than the tokenizer's \(4096\)"):
        check_hf_model_spec(None, None, FIXTURE, 4096, 8)
    with pytest.raises(HFModelError, match="covers 64 positions, fewer than context_length 128"):
        check_hf_model_spec(None, None, FIXTURE, 256, 128)


def test_config_only_directory_builds_a_random_model() -> None:
    # Execute
    spec = check_hf_model_spec(None, None, FIXTURE, 256, 32)
    model = build_hf_model(None, None, FIXTURE, vocab_size=256, context_length=32, seed=0)
    # Assert
    assert spec.has_weights is False and spec.hf_path == FIXTURE.resolve()
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_key_value_heads) == ("llama", 32, 2)
    assert model(torch.randint(0, 256, (1, 32))).shape == (1, 32, 300)


def test_weights_directory_is_loaded_exactly(tmp_path: Path) -> None:
    # Prepare: a directory with config.json and model.safetensors.
    source = build_hf_model(None, None, FIXTURE, vocab_size=300, context_length=16, seed=2)
    source.hf_model.save_pretrained(tmp_path)
    # Execute
    loaded = build_hf_model(None, None, tmp_path, vocab_size=300, context_length=16, seed=99)
    # Assert
    assert check_hf_model_spec(None, None, tmp_path, 300, 16).has_weights
    assert loaded.training
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_incomplete_shard_index_is_refused(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HFModelError, match=r"shard file\(s\) missing: model-00002-of-00002.safetensors"):
        check_hf_model_spec(None, None, tmp_path, 300, 16)
