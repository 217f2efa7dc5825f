"""Tests for the tokenizers (farsync.data.tokenizer)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from farsync.data.corpus import load_text_files
from farsync.data.tokenizer import (
    EOS_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    TokenizerError,
    bytes_to_unicode,
    load_tokenizer_json,
    make_tokenizer,
    train_bpe,
)

pytestmark = pytest.mark.usefixtures("private_cache")
"""Tokenizers and token caches go to each test's own directory (see tests/conftest.py)."""

TEXT = "héllo wörld, 日本語\n\tdef f(x):\n    return x + 1  # é\n"
TRAIN = [("the quick brown fox jumps over the lazy dog. " * 30), "hello world, hello farsync! " * 20, TEXT]


def test_byte_tokenizer_matches_corpus_bytes(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    corpus = load_text_files(tmp_path / "a.txt", val_percent=0)
    tokenizer = ByteTokenizer()
    # Execute
    ids = tokenizer.encode(TEXT)
    # Assert
    assert torch.equal(torch.tensor(ids, dtype=torch.uint8), corpus.train_tokens())
    assert ids == list(TEXT.encode("utf-8")) and tokenizer.decode(ids) == TEXT
    assert tokenizer.vocab_size == 256 and tokenizer.eos_id is None
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.decode([0xE6]) == "\ufffd"
    with pytest.raises(TokenizerError, match="0..255"):
        tokenizer.decode([256])


def test_bytes_to_unicode_is_a_bijection_onto_printables() -> None:
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256)) and len(set(mapping.values())) == 256
    assert mapping[ord("a")] == "a" and mapping[ord(" ")] == "Ġ" and mapping[0] == "Ā"


def test_byte_tokenizer_saves_hf_files_with_the_same_ids(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    # Execute
    written = ByteTokenizer().save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    # Assert
    assert sorted(p.name for p in written) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert hf(TEXT)["input_ids"] == list(TEXT.encode("utf-8")) == fast.encode(TEXT)
    assert hf.decode(list(TEXT.encode("utf-8"))) == TEXT
    reloaded = load_tokenizer_json(tmp_path)
    assert reloaded.encode(TEXT) == list(TEXT.encode("utf-8")) and reloaded.vocab_size == 256
    assert reloaded.eos_id is None


def test_train_bpe_round_trips_and_compresses(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    # Execute
    tokenizer = train_bpe(TRAIN, vocab_size=320, cache_dir=tmp_path)
    ids = tokenizer.encode(TEXT)
    sample = "the quick brown fox jumps over the lazy dog."
    # Assert
    assert 257 < tokenizer.vocab_size <= 320 and tokenizer.eos_id == 0
    assert tokenizer.decode(ids) == TEXT and max(ids) < tokenizer.vocab_size
    assert len(tokenizer.encode(sample)) < len(sample.encode("utf-8")) // 2
    assert tokenizer.encode_batch([sample, TEXT]) == [tokenizer.encode(sample), ids]
    assert tokenizer.encode(EOS_TOKEN) == [0]
    assert len(list(tmp_path.glob("bpe-*.json"))) == 1


def test_train_bpe_reuses_the_cache_and_keys_on_text_and_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("tokenizers")
    caplog.set_level(logging.INFO, logger="farsync.data.tokenizer")
    first = train_bpe(TRAIN, vocab_size=300, cache_dir=tmp_path)
    # Execute
    caplog.clear()
    again = train_bpe(TRAIN, vocab_size=300, cache_dir=tmp_path)
    reused = "reusing the cached BPE tokenizer" in caplog.text
    train_bpe(TRAIN, vocab_size=310, cache_dir=tmp_path)
    train_bpe([*TRAIN, "more"], vocab_size=300, cache_dir=tmp_path)
    # Assert
    assert reused and again.identity == first.identity and again.encode(TEXT) == first.encode(TEXT)
    assert len(list(tmp_path.glob("bpe-*.json"))) == 3


def test_train_bpe_from_files_keys_on_file_identity(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    # Prepare
    data = tmp_path / "data.txt"
    data.write_text("\n".join(TRAIN), encoding="utf-8")
    cache = tmp_path / "cache"
    # Execute
    from_file = make_tokenizer("bpe", vocab_size=300, cache_dir=cache, files=[data])
    data.write_text("\n".join(TRAIN) + "\nchanged", encoding="utf-8")
    train_bpe(files=[data], vocab_size=300, cache_dir=cache)
    # Assert
    assert isinstance(from_file, BPETokenizer) and from_file.decode(from_file.encode(TEXT)) == TEXT
    assert len(list(cache.glob("bpe-*.json"))) == 2


def test_bpe_save_loads_in_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = train_bpe(TRAIN, vocab_size=300, cache_dir=tmp_path / "cache")
    # Execute
    tokenizer.save(tmp_path / "out")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    # Assert
    assert hf(TEXT)["input_ids"] == tokenizer.encode(TEXT)
    assert hf.eos_token == EOS_TOKEN and hf.eos_token_id == 0 and len(hf) == tokenizer.vocab_size
    assert load_tokenizer_json(tmp_path / "out" / "tokenizer.json").identity == tokenizer.identity


def test_bad_tokenizer_settings_raise_clear_errors(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    with pytest.raises(TokenizerError, match=r"tokenizer path '.*missing.json' does not exist .*expected a"):
        load_tokenizer_json(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(TokenizerError, match=r"'.*broken.json' is not a valid tokenizers JSON file"):
        load_tokenizer_json(tmp_path / "broken.json")
    with pytest.raises(TokenizerError, match="unknown tokenizer 'sentencepiece'; expected 'bytes', 'bpe'"):
        make_tokenizer("sentencepiece")
    with pytest.raises(TokenizerError, match="needs a vocab_size"):
        make_tokenizer("bpe", texts=TRAIN)
    with pytest.raises(TokenizerError, match=r"vocab_size must be an integer >= 257"):
        train_bpe(TRAIN, vocab_size=100, cache_dir=tmp_path)
    with pytest.raises(TokenizerError, match="exactly one of texts and files"):
        train_bpe(vocab_size=300, cache_dir=tmp_path)
    with pytest.raises(TokenizerError, match=r"files not found: .*nope.txt"):
        train_bpe(files=[tmp_path / "nope.txt"], vocab_size=300, cache_dir=tmp_path)
    assert isinstance(make_tokenizer("bytes"), ByteTokenizer)
