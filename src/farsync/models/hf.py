"""Hugging Face causal language models built from a local description only.

This module owns turning a model description into a ``transformers`` causal LM that farsync's training
loop can use like its own :class:`~farsync.models.gpt.GPT`: a module whose ``forward(x)`` maps token ids
``[batch, seq]`` to logits ``[batch, seq, vocab]`` (farsync computes the cross-entropy itself).

A description is either

* an architecture name from :data:`ARCHITECTURES` plus a ``size`` mapping (keys in :data:`SIZE_KEYS`),
  turned into that architecture's ``transformers`` config class and randomly initialised, or
* ``hf_path``: a local directory holding ``config.json`` and optionally weights (``model.safetensors``,
  or shards listed in ``model.safetensors.index.json``), loaded with
  ``from_pretrained(path, local_files_only=True)``.

Nothing is ever fetched from a model hub. Every problem with a description raises :class:`HFModelError`
(a ``ValueError``) naming the offending key (``architecture``, ``size.<key>``, ``hf_path``, ``vocab_size``
or ``context_length``) and what is allowed; :func:`check_hf_model_spec` runs those checks without
building any weights, for a launcher to call before it starts workers.

``transformers`` is an optional dependency (``pip install farsync[hf]``); it is imported lazily, so
importing this module is cheap and works without it.

References: the ``transformers`` model docs for `Llama
<https://huggingface.co/docs/transformers/model_doc/llama>`_, `Qwen2
<https://huggingface.co/docs/transformers/model_doc/qwen2>`_, `Mistral
<https://huggingface.co/docs/transformers/model_doc/mistral>`_ and `GPT-2
<https://huggingface.co/docs/transformers/model_doc/gpt2>`_.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "SIZE_KEYS",
    "SMALL_LLAMA_SIZE",
    "WEIGHT_FILES",
    "HFCausalLM",
    "HFModelError",
    "HFModelSpec",
    "build_hf_model",
    "check_hf_model_spec",
    "count_parameters",
    "estimate_num_parameters",
    "hf_config",
]

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "mistral", "gpt2")
"""Architecture names accepted for a model built from ``size`` (the ``transformers`` ``model_type``)."""

SIZE_KEYS: dict[str, str] = {
    "hidden_size": "residual width (required)",
    "num_layers": "number of transformer blocks (required)",
    "num_heads": "attention heads per block; must divide hidden_size (required)",
    "num_kv_heads": "key/value heads for grouped-query attention; must divide num_heads "
    "(default num_heads; gpt2 only allows num_heads)",
    "intermediate_size": "feed-forward width (default 4*hidden_size for gpt2, "
    "8/3*hidden_size rounded up to a multiple of 32 for the gated llama-family MLP)",
    "tie_embeddings": "share the input embedding and output projection (default false; gpt2 default true)",
    "norm_eps": "epsilon of the RMSNorm / LayerNorm (default: the transformers default)",
    "init_std": "standard deviation of the normal weight initialisation (default 0.02)",
}
"""Keys allowed in ``size``, with what each means."""

SMALL_LLAMA_SIZE: dict[str, int] = {
    "hidden_size": 384,
    "num_layers": 6,
    "num_heads": 6,
    "num_kv_heads": 6,
    "intermediate_size": 1024,
}
"""A suggested small llama for CPU experiments: with ``vocab_size=4096`` and ``context_length=256`` it has
13,767,552 parameters (3.1M of them in the untied input and output embeddings). ``hidden_size=256`` with
four layers and four heads gives 5.3M. Any size is accepted; tests use ``hidden_size=32``, two layers."""

WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""Weight files whose presence in ``hf_path`` makes :func:`build_hf_model` load weights (else random init)."""

_REQUIRED_SIZE_KEYS = ("hidden_size", "num_layers", "num_heads")
_GATED_MLP_MULTIPLE = 32


class HFModelError(ValueError):
    """A model description that cannot be built; the message names the key and what is allowed."""


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise HFModelError(
            "Hugging Face models need the transformers library: pip install farsync[hf]"
        ) from error
    return transformers


@dataclass(frozen=True, kw_only=True)
class HFModelSpec:
    """A checked model description, as returned by :func:`check_hf_model_spec`.

    Exactly one of ``architecture`` and ``hf_path`` is set. ``vocab_size`` and ``context_length`` are what
    the data needs: the model's vocabulary must hold ``vocab_size`` ids and its position range must cover
    ``context_length`` tokens.
    """

    architecture: str | None
    """Architecture name from :data:`ARCHITECTURES`, or ``None`` when ``hf_path`` is used."""
    size: dict[str, Any] = field(default_factory=dict)
    """Size keys (see :data:`SIZE_KEYS`) with defaults filled in; empty when ``hf_path`` is used."""
    hf_path: Path | None = None
    """Resolved local model directory, or ``None``."""
    vocab_size: int
    """Number of token ids the tokenizer produces."""
    context_length: int
    """Longest sequence the training loop feeds the model."""
    has_weights: bool = False
    """Whether ``hf_path`` holds weights to start from (else the model is randomly initialised)."""


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HFModelError(f"{key} must be a positive integer, got {value!r}")
    return value


def _check_size(architecture: str, size: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(size) - set(SIZE_KEYS))
    if unknown:
        raise HFModelError(
            f"unknown size key(s) {', '.join('size.' + k for k in unknown)}; allowed: {', '.join(SIZE_KEYS)}"
        )
    missing = [key for key in _REQUIRED_SIZE_KEYS if key not in size]
    if missing:
        raise HFModelError(
            f"architecture {architecture!r} needs size key(s) {', '.join('size.' + k for k in missing)} "
            f"(required: {', '.join(_REQUIRED_SIZE_KEYS)})"
        )
    checked: dict[str, Any] = {}
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
        if key in size:
            checked[key] = _positive_int(size[key], f"size.{key}")
    hidden, heads = checked["hidden_size"], checked["num_heads"]
    if hidden % heads != 0:
        raise HFModelError(f"size.hidden_size ({hidden}) must be divisible by size.num_heads ({heads})")
    kv_heads = checked.setdefault("num_kv_heads", heads)
    if architecture == "gpt2" and kv_heads != heads:
        raise HFModelError(
            f"size.num_kv_heads ({kv_heads}) must equal size.num_heads ({heads}) for gpt2, "
            "which has no grouped-query attention; use llama, qwen2 or mistral"
        )
    if heads % kv_heads != 0:
        raise HFModelError(f"size.num_heads ({heads}) must be divisible by size.num_kv_heads ({kv_heads})")
    if "intermediate_size" not in checked:
        if architecture == "gpt2":
            checked["intermediate_size"] = 4 * hidden
        else:
            gated = math.ceil(8 * hidden / 3 / _GATED_MLP_MULTIPLE) * _GATED_MLP_MULTIPLE
            checked["intermediate_size"] = gated
    tie = size.get("tie_embeddings", architecture == "gpt2")
    if not isinstance(tie, bool):
        raise HFModelError(f"size.tie_embeddings must be true or false, got {tie!r}")
    checked["tie_embeddings"] = tie
    for key, default in (("norm_eps", None), ("init_std", 0.02)):
        value = size.get(key, default)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise HFModelError(f"size.{key} must be a number in (0, 1), got {value!r}")
        checked[key] = float(value)
    return checked


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES)


def _read_local_config(hf_path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    directory = Path(hf_path).expanduser()
    if not directory.is_dir():
        raise HFModelError(
            f"hf_path {str(directory)!r} is not a local directory; expected a directory holding config.json "
            "(and optionally model.safetensors or sharded safetensors with model.safetensors.index.json). "
            "Hub model names are not supported"
        )
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise HFModelError(
            f"hf_path {str(directory)!r} has no config.json; expected a Hugging Face model directory"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HFModelError(f"hf_path {str(directory)!r}: config.json is not valid JSON ({error})") from error
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise HFModelError(
            f"hf_path {str(directory)!r}: config.json must be a JSON object with a 'model_type' string"
        )
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (
            OSError,
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
            AttributeError,
        ) as error:
            raise HFModelError(
                f"hf_path {str(directory)!r}: model.safetensors.index.json has no valid 'weight_map' ({error})"
            ) from error
        missing = sorted(name for name in shards if not (directory / name).is_file())
        if missing:
            raise HFModelError(f"hf_path {str(directory)!r}: shard file(s) missing: {', '.join(missing)}")
    return directory.resolve(), config


def _config_limits(config: Mapping[str, Any]) -> tuple[int | None, int | None]:
    vocab = config.get("vocab_size")
    positions = config.get("max_position_embeddings", config.get("n_positions"))
    return (
        vocab if isinstance(vocab, int) else None,
        positions if isinstance(positions, int) else None,
    )


def check_hf_model_spec(
    architecture: str | None,
    size: Mapping[str, Any] | None,
    hf_path: str | os.PathLike[str] | None,
    vocab_size: int,
    context_length: int,
) -> HFModelSpec:
    """Check a model description without building weights or importing ``transformers`` model code.

    Exactly one of ``architecture`` (with ``size``) and ``hf_path`` must be given. With ``hf_path`` the
    directory must hold a valid ``config.json`` (and, when present, a complete shard index); the model's
    ``vocab_size`` must be at least ``vocab_size`` and its position range at least ``context_length``.
    Returns the checked :class:`HFModelSpec`; raises :class:`HFModelError` naming the problem.
    """
    _positive_int(vocab_size, "vocab_size")
    _positive_int(context_length, "context_length")
    if (architecture is None) == (hf_path is None):
        raise HFModelError(
            "give exactly one of architecture (with size) and hf_path, "
            f"got architecture={architecture!r} and hf_path={hf_path!r}"
        )
    if hf_path is not None:
        if size:
            raise HFModelError("size is only used with architecture; hf_path takes its size from config.json")
        directory, config = _read_local_config(hf_path)
        model_vocab, positions = _config_limits(config)
        if model_vocab is not None and model_vocab < vocab_size:
            raise HFModelError(
                f"hf_path {str(directory)!r}: the model's vocab_size ({model_vocab}) is smaller than the "
                f"tokenizer's ({vocab_size}); use a matching tokenizer or model"
            )
        if positions is not None and positions < context_length:
            raise HFModelError(
                f"hf_path {str(directory)!r}: the model covers {positions} positions, fewer than "
                f"context_length {context_length}"
            )
        return HFModelSpec(
            architecture=None,
            hf_path=directory,
            vocab_size=vocab_size,
            context_length=context_length,
            has_weights=_has_weights(directory),
        )
    assert architecture is not None
    name = architecture.lower()
    if name not in ARCHITECTURES:
        raise HFModelError(f"unknown architecture {architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    return HFModelSpec(
        architecture=name,
        size=_check_size(name, size or {}),
        vocab_size=vocab_size,
        context_length=context_length,
    )


def _architecture_kwargs(spec: HFModelSpec) -> dict[str, Any]:
    size = spec.size
    if spec.architecture == "gpt2":
        kwargs: dict[str, Any] = {
            "n_embd": size["hidden_size"],
            "n_layer": size["num_layers"],
            "n_head": size["num_heads"],
            "n_inner": size["intermediate_size"],
            "n_positions": spec.context_length,
            # No dropout, as in farsync's own GPT: a forward pass is a pure function of the parameters.
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "bos_token_id": None,
            "eos_token_id": None,
        }
        if "norm_eps" in size:
            kwargs["layer_norm_epsilon"] = size["norm_eps"]
    else:
        kwargs = {
            "hidden_size": size["hidden_size"],
            "num_hidden_layers": size["num_layers"],
            "num_attention_heads": size["num_heads"],
            "num_key_value_heads": size["num_kv_heads"],
            "intermediate_size": size["intermediate_size"],
            "max_position_embeddings": spec.context_length,
            "bos_token_id": None,
            "eos_token_id": None,
        }
        if "norm_eps" in size:
            kwargs["rms_norm_eps"] = size["norm_eps"]
    kwargs["vocab_size"] = spec.vocab_size
    kwargs["tie_word_embeddings"] = size["tie_embeddings"]
    kwargs["initializer_range"] = size["init_std"]
    return kwargs


def hf_config(spec: HFModelSpec) -> Any:
    """The ``transformers`` config (a ``PretrainedConfig``) for a checked spec, without any weights."""
    transformers = _transformers()
    if spec.hf_path is not None:
        try:
            return transformers.AutoConfig.from_pretrained(str(spec.hf_path), local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise HFModelError(
                f"hf_path {str(spec.hf_path)!r}: transformers cannot read config.json ({error})"
            ) from error
    assert spec.architecture is not None
    config_class = transformers.CONFIG_MAPPING[spec.architecture]
    return config_class(**_architecture_kwargs(spec))


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM behind farsync's model interface: ``forward(x) -> logits``.

    The parameters are the wrapped model's (``hf_model``); keep ``hf_model`` for export with
    :func:`farsync.report.export.export_hf_directory`. The key/value cache is never used.
    """

    def __init__(self, hf_model: nn.Module, context_length: int | None = None) -> None:
        super().__init__()
        self.hf_model: Any = hf_model
        """The wrapped ``transformers`` ``PreTrainedModel`` (typed ``Any``: its methods come from transformers)."""
        config = getattr(hf_model, "config", None)
        limits = _config_limits(config.to_dict()) if config is not None else (None, None)
        self.vocab_size: int | None = limits[0]
        """Number of logits per position (the model's vocabulary), when the config states it."""
        self.context_length: int | None = context_length if context_length is not None else limits[1]
        """Longest accepted sequence, or ``None`` when unknown."""
        self.train()  # from_pretrained returns eval mode; a new module starts in train mode

    @property
    def config(self) -> Any:
        """The wrapped model's ``transformers`` config."""
        return self.hf_model.config

    def forward(self, x: Tensor) -> Tensor:
        """Map token ids ``[B, T]`` to next-token logits ``[B, T, vocab_size]``."""
        if self.context_length is not None and x.shape[1] > self.context_length:
            raise ValueError(f"sequence length {x.shape[1]} exceeds context_length {self.context_length}")
        output = self.hf_model(input_ids=x, use_cache=False)
        logits: Tensor = output.logits
        return logits


def _build_hf(spec: HFModelSpec, dtype: torch.dtype) -> nn.Module:
    transformers = _transformers()
    if spec.hf_path is not None and spec.has_weights:
        try:
            model: nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
                str(spec.hf_path), local_files_only=True
            )
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise HFModelError(f"hf_path {str(spec.hf_path)!r}: cannot load the model ({error})") from error
        logger.info("loaded %s from %s", type(model).__name__, spec.hf_path)
    else:
        config = hf_config(spec)
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except ValueError as error:
            raise HFModelError(
                f"model_type {config.model_type!r} has no causal LM in transformers ({error})"
            ) from error
        logger.info("built a randomly initialised %s", type(model).__name__)
    return model.to(dtype)


def build_hf_model(
    architecture: str | None,
    size: Mapping[str, Any] | None,
    hf_path: str | os.PathLike[str] | None,
    vocab_size: int,
    context_length: int,
    *,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> HFCausalLM:
    """Build the causal LM a description names, wrapped as :class:`HFCausalLM`.

    Arguments are as for :func:`check_hf_model_spec`, which runs first. With ``architecture`` the model
    gets exactly ``vocab_size`` ids and ``context_length`` positions. With ``hf_path`` the directory's
    ``config.json`` decides the shape, and its weights are loaded (``local_files_only=True``) when one of
    :data:`WEIGHT_FILES` is present; otherwise the model is randomly initialised from the config.

    Random initialisation uses the global torch RNG, or, when ``seed`` is given, a private one seeded
    with it (the global RNG is left untouched), so every worker can build identical weights.
    The parameters are cast to ``dtype`` (float32 by default, whatever the checkpoint stores).
    """
    spec = check_hf_model_spec(architecture, size, hf_path, vocab_size, context_length)
    if seed is None:
        model = _build_hf(spec, dtype)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build_hf(spec, dtype)
    return HFCausalLM(model, context_length=context_length)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct scalar parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def estimate_num_parameters(spec: HFModelSpec) -> int:
    """Parameter count of the model a spec describes, built on the ``meta`` device (no memory, no init)."""
    transformers = _transformers()
    config = hf_config(spec)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return count_parameters(model)
