"""Tests for exporting Hugging Face models as safetensors directories (farsync.report.export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from farsync.data.tokenizer import ByteTokenizer, train_bpe  # noqa: E402
from farsync.models import GPT, GPTConfig  # noqa: E402
from farsync.models.hf import HFCausalLM, build_hf_model  # noqa: E402
from farsync.report.export import HFExportError, export_hf_directory, load_exported  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")
"""Tokenizers and token caches go to each test's own directory (see tests/conftest.py)."""

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


def _trained_a_little(architecture: str = "llama", vocab_size: int = 300) -> HFCausalLM:
    size = dict(TINY, num_kv_heads=4) if architecture == "gpt2" else TINY
    model = build_hf_model(architecture, size, None, vocab_size=vocab_size, context_length=16, seed=0)
    with torch.no_grad():  # move away from the initialisation so a silent re-init would show
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model


def _assert_same_logits(model: torch.nn.Module, loaded: torch.nn.Module, vocab_size: int) -> None:
    x = torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        expected = model(x)
        actual = loaded(input_ids=x).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_export_round_trip_with_tokenizer(tmp_path: Path) -> None:
    # Prepare
    model = _trained_a_little()
    tokenizer = train_bpe(
        ["some training text for the tokenizer " * 20], vocab_size=290, cache_dir=tmp_path / "c"
    )
    out = tmp_path / "export"
    # Execute
    written = export_hf_directory(model, out, tokenizer)
    loaded = load_exported(out)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    # Assert
    names = {path.name for path in written}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "model.safetensors.index.json" not in names
    assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.config.num_key_value_heads == 2
    _assert_same_logits(model, loaded, 300)
    assert hf_tokenizer("training text")["input_ids"] == tokenizer.encode("training text")


def test_sharded_export_writes_an_index_and_loads(tmp_path: Path) -> None:
    # Prepare: the tiny llama holds ~180 kB of float32 weights, so 40 kB shards give several files.
    model = _trained_a_little()
    out = tmp_path / "sharded"
    # Execute
    written = export_hf_directory(model, out, ByteTokenizer(), max_shard_size="40KB")
    loaded = load_exported(out)
    # Assert
    shards = sorted(path.name for path in written if path.name.endswith(".safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3 and "model.safetensors" not in shards
    assert sorted(set(index["weight_map"].values())) == shards
    _assert_same_logits(model, loaded, 300)


def test_tied_embeddings_export_from_a_pretrained_model(tmp_path: Path) -> None:
    # Prepare: a bare transformers model (not the wrapper) with a tied input/output embedding.
    wrapper = _trained_a_little("gpt2", vocab_size=256)
    pretrained = wrapper.hf_model
    # Execute
    export_hf_directory(pretrained, tmp_path / "gpt2")
    loaded = load_exported(tmp_path / "gpt2")
    # Assert
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    _assert_same_logits(wrapper, loaded, 256)


def test_non_empty_directory_needs_overwrite(tmp_path: Path) -> None:
    # Prepare
    model = _trained_a_little()
    out = tmp_path / "out"
    export_hf_directory(model, out, max_shard_size=40_000)
    (out / "notes.txt").write_text("keep me")
    # Execute / Assert
    with pytest.raises(HFExportError, match=r"export directory '.*out' is not empty; .*overwrite=True"):
        export_hf_directory(model, out)
    written = export_hf_directory(model, out, overwrite=True)
    names = sorted(path.name for path in written)
    assert names == ["config.json", "generation_config.json", "model.safetensors", "notes.txt"]
    _assert_same_logits(model, load_exported(out), 300)


def test_bad_exports_and_loads_are_named(tmp_path: Path) -> None:
    gpt = GPT(GPTConfig(num_layers=1, width=16, num_heads=2, context_length=8))
    with pytest.raises(HFExportError, match="cannot export a GPT: expected a transformers PreTrainedModel"):
        export_hf_directory(gpt, tmp_path / "gpt")
    small = build_hf_model("llama", TINY, None, vocab_size=100, context_length=8, seed=0)
    with pytest.raises(HFExportError, match="the tokenizer has 256 ids but the model's vocabulary only 100"):
        export_hf_directory(small, tmp_path / "small", ByteTokenizer())
    with pytest.raises(HFExportError, match=r"'.*missing' is not an exported model directory"):
        load_exported(tmp_path / "missing")
    with pytest.raises(HFExportError, match="max_shard_size must be a positive byte count"):
        export_hf_directory(small, tmp_path / "zero", max_shard_size=0)
