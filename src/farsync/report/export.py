"""Export a trained Hugging Face model as a standard model directory (config + safetensors + tokenizer).

This module owns writing a model that ``transformers`` can load with no farsync code:
:func:`export_hf_directory` writes ``config.json``, ``generation_config.json`` and the weights as
``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``
when they exceed ``max_shard_size``) through ``PreTrainedModel.save_pretrained``, plus the tokenizer's
``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` when one is given.
:func:`load_exported` loads such a directory back with
``AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)``.

A run with ``model.kind = "hf"`` ends with worker 0 writing the final global weights (fp32) and the
tokenizer to ``RUN_DIR/final/`` in that format (:func:`final_model_hook`, :func:`save_final_model`);
``farsync export RUN_DIR --out DIR`` (:func:`export_run`) copies them out as a model directory, sharded as
asked. Runs under ``--elastic`` write no ``final/`` (their workers do not run the hook).

Problems raise :class:`HFExportError` (a ``ValueError``) naming the directory or argument.
``transformers`` is an optional dependency (``pip install farsync[hf]``), imported only when used.
References: ``transformers``' `model sharing and sharded checkpoints
<https://huggingface.co/docs/transformers/main/en/big_models>`_ and the `safetensors format
<https://huggingface.co/docs/safetensors>`_.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from farsync.config import ConfigError, load_config

if TYPE_CHECKING:  # only types: importing this module never imports farsync.data or the training loop
    from farsync.data.tokenizer import Tokenizer
    from farsync.train.context import WorkerResult
    from farsync.train.loop import TrainingLoop

__all__ = [
    "EXPORTED_WEIGHTS",
    "EXPORTED_WEIGHT_INDEX",
    "FINAL_DIR",
    "HFExportError",
    "export_hf_directory",
    "export_run",
    "final_model_hook",
    "load_exported",
    "save_final_model",
]

FINAL_DIR = "final"
"""Sub-directory of a run directory holding the final global weights of a Hugging Face model."""

logger = logging.getLogger(__name__)

EXPORTED_WEIGHTS = "model.safetensors"
"""Weight file of an unsharded export."""
EXPORTED_WEIGHT_INDEX = "model.safetensors.index.json"
"""Index file of a sharded export (maps each tensor name to its shard file)."""

_STALE_PATTERNS = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "config.json",
    "generation_config.json",
    # farsync.data.tokenizer.TOKENIZER_FILES
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


class HFExportError(ValueError):
    """A model or directory that cannot be exported or loaded; the message names which."""


def _pretrained(model: nn.Module) -> Any:
    # The farsync wrapper (farsync.models.hf.HFCausalLM) keeps the transformers model as ``hf_model``.
    inner = getattr(model, "hf_model", model)
    if not callable(getattr(inner, "save_pretrained", None)) or getattr(inner, "config", None) is None:
        raise HFExportError(
            f"cannot export a {type(model).__name__}: expected a transformers PreTrainedModel or a model built "
            "by farsync.models.hf.build_hf_model (farsync's own GPT has no Hugging Face format)"
        )
    return inner


def _prepare_directory(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise HFExportError(f"export directory {str(out_dir)!r} is a file; expected a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise HFExportError(
                f"export directory {str(out_dir)!r} is not empty; choose an empty or new directory, or pass "
                "overwrite=True to replace a previous export"
            )
        # Only files an export writes are removed: stale shards would otherwise mix with the new weights.
        for pattern in _STALE_PATTERNS:
            for stale in out_dir.glob(pattern):
                if stale.is_file():
                    stale.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def export_hf_directory(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    tokenizer: Tokenizer | None = None,
    *,
    max_shard_size: str | int = "2GB",
    overwrite: bool = False,
) -> list[Path]:
    """Write ``model`` (and ``tokenizer``) as a Hugging Face model directory; returns the files written.

    ``model`` is an :class:`~farsync.models.hf.HFCausalLM` or a ``transformers`` ``PreTrainedModel``. The
    weights go to safetensors, split into shards of at most ``max_shard_size`` (bytes, or a string such as
    ``"2GB"`` / ``"500MB"``) with an index when larger. ``out_dir`` must be new or empty unless
    ``overwrite`` is set, in which case the files of a previous export there are replaced (other files are
    left alone). Raises :class:`HFExportError` for a non-HF model, a non-empty directory, a tokenizer with
    more ids than the model's vocabulary, or an invalid ``max_shard_size``.
    """
    pretrained = _pretrained(model)
    if isinstance(max_shard_size, bool) or (isinstance(max_shard_size, int) and max_shard_size < 1):
        raise HFExportError(
            f"max_shard_size must be a positive byte count or a size like '2GB', got {max_shard_size!r}"
        )
    model_vocab = getattr(pretrained.config, "vocab_size", None)
    if tokenizer is not None and isinstance(model_vocab, int) and tokenizer.vocab_size > model_vocab:
        raise HFExportError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary only {model_vocab}; "
            "export the tokenizer the model was trained with"
        )
    directory = Path(out_dir).expanduser()
    _prepare_directory(directory, overwrite)
    save = pretrained.save_pretrained
    kwargs: dict[str, Any] = {"max_shard_size": max_shard_size}
    if "safe_serialization" in inspect.signature(save).parameters:  # transformers 4.x; 5.x always uses it
        kwargs["safe_serialization"] = True
    try:
        save(str(directory), **kwargs)
    except ValueError as error:
        raise HFExportError(f"cannot save the model to {str(directory)!r} ({error})") from error
    if not (directory / EXPORTED_WEIGHTS).is_file() and not (directory / EXPORTED_WEIGHT_INDEX).is_file():
        raise HFExportError(f"transformers wrote no safetensors weights to {str(directory)!r}")
    if tokenizer is not None:
        tokenizer.save(directory)
    written = sorted(path for path in directory.iterdir() if path.is_file())
    logger.info("exported %s to %s (%d files)", type(pretrained).__name__, directory, len(written))
    return written


def load_exported(directory: str | os.PathLike[str]) -> Any:
    """Load an exported directory with ``AutoModelForCausalLM.from_pretrained(..., local_files_only=True)``.

    Returns the ``transformers`` model (in eval mode, as ``from_pretrained`` leaves it). Raises
    :class:`HFExportError` naming the directory when it is missing or not a loadable model directory.
    """
    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        raise HFExportError(
            f"{str(path)!r} is not an exported model directory; expected config.json and safetensors weights"
        )
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise HFExportError(
            "loading an export needs the transformers library: pip install farsync[hf]"
        ) from error
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise HFExportError(f"cannot load the model in {str(path)!r} ({error})") from error


def save_final_model(model: nn.Module, run_dir: str | os.PathLike[str], tokenizer: Tokenizer | None) -> Path:
    """Writes ``model`` (holding the final global weights) and ``tokenizer`` to ``RUN_DIR/final/``."""
    from transformers.utils import logging as hf_logging

    final = Path(run_dir) / FINAL_DIR
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no "Writing model shards" bar mid-run
    try:
        export_hf_directory(model, final, tokenizer, overwrite=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return final


def final_model_hook(loop: TrainingLoop, result: WorkerResult) -> WorkerResult:
    """A loop's ``finish`` part: worker 0 of a Hugging Face run saves the global weights for export."""
    if loop.ctx.rank == 0 and loop.ctx.out_dir is not None and hasattr(loop.task.model, "hf_model"):
        with loop.algorithm.evaluating() as model:
            save_final_model(model, loop.ctx.out_dir, loop.task.tokenizer)
    return result


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_shard_size: str | int = "2GB",
    overwrite: bool = False,
) -> list[Path]:
    """``farsync export``: the final global weights of the run in ``run_dir`` as a Hugging Face directory.

    Writes ``config.json``, ``model.safetensors`` (or shards of at most ``max_shard_size`` with an index)
    and the tokenizer files to ``out_dir``, which ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads
    offline. Raises :class:`~farsync.config.ConfigError` (naming ``RUN_DIR`` or ``--out``) when the run is not
    a finished Hugging Face run or the output cannot be written.
    """
    run = Path(run_dir).expanduser()
    if not (run / "config.toml").is_file():
        raise ConfigError("RUN_DIR", str(run_dir), "expected a run directory containing config.toml")
    config = load_config(run / "config.toml")
    if config.model.kind != "hf":
        raise ConfigError(
            "RUN_DIR",
            str(run_dir),
            f"the run trained model.kind = {config.model.kind!r}; only Hugging Face models (model.kind = "
            "'hf') export to a Hugging Face directory",
        )
    final = run / FINAL_DIR
    if not (final / "config.json").is_file():
        raise ConfigError(
            "RUN_DIR",
            str(run_dir),
            f"no final weights in {final} (written when a run ends; an unfinished or --elastic run has none)",
        )
    from farsync.data.tokenizer import TokenizerError, load_tokenizer_json

    try:
        model = load_exported(final)
        tokenizer = load_tokenizer_json(final) if (final / "tokenizer.json").is_file() else None
        return export_hf_directory(
            model, out_dir, tokenizer, max_shard_size=max_shard_size, overwrite=overwrite
        )
    except (HFExportError, TokenizerError) as error:
        raise ConfigError("--out", str(out_dir), " ".join(str(error).split())) from None
