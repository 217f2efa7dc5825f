"""Config keys of issue 12 (model.kind = "hf", tokenizers, local data, precision, logging, shards): a bad
model path, tokenizer path or dataset path is one line naming the key, exit code 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from farsync import cli
from farsync.config import ConfigError, config_to_toml, load_config

pytestmark = pytest.mark.usefixtures("private_cache")
"""Tokenizers and token caches go to each test's own directory (see tests/conftest.py)."""

TINY = [
    "model.kind=hf",
    "model.num_layers=1",
    "model.width=32",
    "model.num_heads=2",
    "model.context_length=16",
]


def _train(tmp_path: Path, *overrides: str) -> int:
    args = ["train", "--no-progress", "--out", str(tmp_path / "run")]
    for override in [*TINY, "data.max_bytes=100000", *overrides]:
        args += ["--set", override]
    return cli.main(args)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ('model.hf_path="/nonexistent/llama"', "model.hf_path"),
        ('data.tokenizer="/nonexistent/tokenizer.json"', "data.tokenizer"),
        ('data.path="/nonexistent/corpus.jsonl"', "data.path"),
    ],
)
def test_missing_paths_are_one_line_config_errors(
    override: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    extra = ("data.kind=local",) if key == "data.path" else ()
    code = _train(tmp_path, *extra, override)
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"farsync: config error: {key} = ")
    assert not (tmp_path / "run").exists()


def test_unusable_files_are_config_errors_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a model directory whose config.json is not JSON, a tokenizer.json that is not a tokenizer,
    # JSONL records without the configured field
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{not json")
    bad_tokenizer = tmp_path / "tokenizer.json"
    bad_tokenizer.write_text('{"version": "1.0"}')
    data = tmp_path / "docs.jsonl"
    data.write_text('{"body": "some text"}\n')
    cases = {
        "model.hf_path": [f'model.hf_path="{model_dir}"'],
        "data.tokenizer": [f'data.tokenizer="{bad_tokenizer}"'],
        "data.path": ["data.kind=local", f'data.path="{data}"'],
    }
    for key, overrides in cases.items():
        # Execute
        code = _train(tmp_path, *overrides)
        # Assert
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (key, err)
        assert err[0].startswith(f"farsync: config error: {key} = "), err
        assert not (tmp_path / "run").exists()


def test_keys_round_trip_and_are_checked() -> None:
    # Prepare
    config = load_config(
        None,
        [
            *TINY,
            "model.num_kv_heads=1",
            "data.tokenizer=bpe",
            "data.vocab_size=512",
            "train.precision=bf16",
            'logging.backends=["tensorboard", "wandb"]',
            "logging.wandb_mode=disabled",
        ],
    )
    # Assert
    assert config.model.hf_size() == {
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "tie_embeddings": False,
    }
    bad = {
        "model.num_kv_heads=3": "model.num_kv_heads",
        "data.vocab_size=100": "data.vocab_size",
        "train.precision=fp16": "train.precision",
        'logging.backends=["mlflow"]': "logging.backends[0]",
    }
    for override, key in bad.items():
        with pytest.raises(ConfigError) as caught:
            load_config(None, [*TINY, override])
        assert caught.value.key == key
    with pytest.raises(ConfigError, match="used only with model.kind = 'hf'"):
        load_config(None, ["model.num_kv_heads=2"])
    with pytest.raises(ConfigError, match="byte vocabulary"):
        load_config(None, ["data.tokenizer=bpe"])
    assert config_to_toml(load_config(None, TINY)).count("[logging]") == 1


def test_the_example_is_a_10_to_20m_llama_on_2_replicas_of_2_shards() -> None:
    pytest.importorskip("transformers")
    from farsync.models.hf import check_hf_model_spec, estimate_num_parameters

    # Prepare
    config = load_config(Path(__file__).parents[2] / "examples" / "llama_tiny.toml")
    spec = check_hf_model_spec(
        config.model.architecture,
        config.model.hf_size(),
        None,
        config.data.vocab_size,
        config.model.context_length,
    )
    # Assert
    assert 10_000_000 <= estimate_num_parameters(spec) <= 20_000_000
    assert (config.num_workers // config.parallel.num_shards, config.parallel.num_shards) == (2, 2)
    assert (config.algorithm.name, config.train.precision, config.data.tokenizer) == ("diloco", "bf16", "bpe")
    assert config.logging.backends == ["tensorboard"]
