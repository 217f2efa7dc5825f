"""Typed run configuration: dataclasses, TOML loading, ``--set`` overrides and one validation pass.

Every section is a small ``@dataclass(kw_only=True)``; components receive only the section they need.
A bad key, a wrong type or an impossible value raises :class:`ConfigError`, whose message names the key,
the value given and what is allowed. The CLI turns that into exit code 2 before anything starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

__all__ = [
    "AggregationConfig",
    "AlgorithmConfig",
    "ByzantineConfig",
    "CheckpointConfig",
    "CompressionConfig",
    "ConfigError",
    "DataConfig",
    "ElasticConfig",
    "FederatedConfig",
    "GossipConfig",
    "LoggingConfig",
    "ModelConfig",
    "NetworkConfig",
    "ParallelConfig",
    "PrivacyConfig",
    "RLConfig",
    "ROBUST_PRESET",
    "RunConfig",
    "TrainConfig",
    "build_section",
    "config_to_toml",
    "load_config",
    "read_config_data",
    "section_to_toml",
    "OVERLAP_RECIPE_SCALE",
    "SPARSE_OUTER_LR",
    "OVERLAP_RULES",
    "outer_recipe",
    "format_bandwidth",
    "format_duration",
    "parse_bandwidth",
    "parse_duration",
]


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config error: {key} = {value!r}: {allowed}")

    @classmethod
    def from_check(cls, text: str) -> ConfigError:
        """The error of a section that checks itself in a higher layer and raises ``ValueError`` worded
        ``"key = value: allowed"`` (``SwarmSettings.validate``): ``key`` is exact, the message is kept as the
        section wrote it (its value already printed with ``repr``)."""
        key, _, rest = text.partition(" = ")
        error = cls(key, rest, "")
        error.args = (f"config error: {text}",)
        return error


_BANDWIDTH_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _number(value: Any) -> float | None:
    """``value`` as a finite float if it is a number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_bandwidth(text: str | float, key: str = "network.bandwidth") -> float:
    """A rate in bits per second: a number as is, or ``"1Gbit"`` -> 1e9.

    Units: bit, Kbit, Mbit, Gbit, Tbit (case-insensitive, optional ``/s``; ``bps`` reads as ``bit``).
    """
    number = _number(text)
    if number is None and not isinstance(text, str):
        raise ConfigError(key, text, "expected a rate in bits/s or a string such as '1Gbit' or '100Mbit'")
    if number is None:
        normalized = re.sub(r"bps\s*$", "bit", str(text))  # "100Mbps" -> "100Mbit"
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-zA-Z]+)(?:/s)?\s*", normalized)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _BANDWIDTH_UNITS:
            raise ConfigError(key, text, "expected a rate such as '1Gbit', '100Mbit' or '500Kbit'")
        number = float(match.group(1)) * _BANDWIDTH_UNITS[unit]
    if number <= 0:
        raise ConfigError(key, text, "bandwidth must be > 0")
    return number


def parse_duration(text: str | float, key: str = "network.latency") -> float:
    """A duration in seconds, >= 0: a number as is, or ``"50ms"`` -> 0.05. Units: us, ms, s."""
    number = _number(text)
    if number is None:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)\s*", text) if isinstance(text, str) else None
        if match is None:
            raise ConfigError(key, text, "expected a duration such as '50ms', '0s' or '200us', >= 0")
        number = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if number < 0:
        raise ConfigError(key, text, "expected a duration such as '50ms', '0s' or '200us', >= 0")
    return number


def format_bandwidth(bits_per_s: float) -> str:
    """A rate for people: 2e7 -> ``"20Mbit"`` (what :func:`parse_bandwidth` reads back, to 4 digits)."""
    for unit, scale in (("Tbit", 1e12), ("Gbit", 1e9), ("Mbit", 1e6), ("Kbit", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:.4g}{unit}"
    return f"{bits_per_s:.4g}bit"


def format_duration(seconds: float) -> str:
    """A duration for people: 0.02 -> ``"20ms"``."""
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.4g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.4g}ms"
    return f"{seconds * 1e6:.4g}us"


def _parse_table(parser: Callable[[Any, str], float]) -> Callable[[Any, str], dict[str, float]]:
    """A parser of ``{worker: value}`` tables from a parser of one value (each value keyed by its worker)."""

    def parse(table: Any, key: str) -> dict[str, float]:
        _check(isinstance(table, dict), key, table, 'expected a table such as {"2" = "10Mbit"}')
        return {str(rank): parser(value, f"{key}.{rank}") for rank, value in table.items()}

    return parse


def _check(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(key, value, allowed)


@dataclass(kw_only=True)
class ModelConfig:
    """Which model every worker trains."""

    kind: Literal["gpt", "mlp", "cnn", "hf"] = "gpt"
    """Byte-level GPT for text, MLP or CNN for classification, or a Hugging Face causal LM (``hf``)."""
    num_layers: int = 4
    """Transformer blocks (GPT, hf)."""
    width: int = 128
    """Embedding width (GPT), hidden_size (hf) or first hidden width (MLP)."""
    num_heads: int = 4
    """Attention heads (GPT, hf); must divide width."""
    context_length: int = 128
    """Tokens per training window (GPT, hf)."""
    architecture: Literal["llama", "qwen2", "mistral", "gpt2"] = "llama"
    """kind = "hf": the transformers architecture built from the size keys (ignored with hf_path)."""
    hf_path: str = ""
    """kind = "hf": a local directory with config.json (and optionally safetensors weights to start from);
    its config decides the size. Empty: build ``architecture`` from the size keys. Never downloaded."""
    num_kv_heads: int = 0
    """kind = "hf": key/value heads for grouped-query attention (0 = num_heads); must divide num_heads."""
    intermediate_size: int = 0
    """kind = "hf": feed-forward width (0 = the architecture's default for width)."""
    tie_embeddings: bool = False
    """kind = "hf": share the input embedding and the output projection."""

    def validate(self, prefix: str = "model") -> None:
        _check(self.num_layers >= 1, f"{prefix}.num_layers", self.num_layers, "must be >= 1")
        _check(self.width >= 1, f"{prefix}.width", self.width, "must be >= 1")
        _check(self.num_heads >= 1, f"{prefix}.num_heads", self.num_heads, "must be >= 1")
        _check(
            self.width % self.num_heads == 0,
            f"{prefix}.num_heads",
            self.num_heads,
            f"must divide model.width ({self.width})",
        )
        _check(self.context_length >= 2, f"{prefix}.context_length", self.context_length, "must be >= 2")
        self._validate_hf(prefix)

    def _validate_hf(self, prefix: str) -> None:
        hf_only = {"hf_path": "", "num_kv_heads": 0, "intermediate_size": 0, "tie_embeddings": False}
        if self.kind != "hf":
            for key, default in hf_only.items():
                value = getattr(self, key)
                _check(value == default, f"{prefix}.{key}", value, "used only with model.kind = 'hf'")
            return
        _check(self.num_kv_heads >= 0, f"{prefix}.num_kv_heads", self.num_kv_heads, "must be >= 0")
        kv_heads = self.num_kv_heads or self.num_heads
        _check(
            self.num_heads % kv_heads == 0,
            f"{prefix}.num_kv_heads",
            self.num_kv_heads,
            f"must divide model.num_heads ({self.num_heads}); 0 = num_heads",
        )
        _check(
            self.architecture != "gpt2" or kv_heads == self.num_heads,
            f"{prefix}.num_kv_heads",
            self.num_kv_heads,
            "gpt2 has no grouped-query attention: use 0 (= num_heads)",
        )
        _check(
            self.intermediate_size >= 0, f"{prefix}.intermediate_size", self.intermediate_size, "must be >= 0"
        )
        if self.hf_path:
            directory = Path(self.hf_path).expanduser()
            _check(
                directory.is_dir(),
                f"{prefix}.hf_path",
                self.hf_path,
                "no such local directory; expected a Hugging Face model directory holding config.json "
                "(hub names are never downloaded)",
            )
            _check(
                (directory / "config.json").is_file(),
                f"{prefix}.hf_path",
                self.hf_path,
                "the directory holds no config.json; expected a Hugging Face model directory",
            )

    def hf_size(self) -> dict[str, Any]:
        """The size keys of :func:`farsync.models.hf.build_hf_model` for ``kind = "hf"`` without hf_path."""
        size: dict[str, Any] = {
            "hidden_size": self.width,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads or self.num_heads,
            "tie_embeddings": self.tie_embeddings,
        }
        if self.intermediate_size:
            size["intermediate_size"] = self.intermediate_size
        return size


@dataclass(kw_only=True)
class DataConfig:
    """Where the training data comes from and how it is split across workers."""

    kind: Literal["text", "local", "digits", "npz"] = "text"
    """text: a text corpus (data.path or the embedded stdlib sources); local: text, JSONL or Parquet files
    at data.path read with ``datasets``; digits: scikit-learn's digits; npz: arrays x and y at data.path."""
    path: str = ""
    """Text file or directory (kind=text), a file, directory or glob (kind=local) or .npz file (kind=npz);
    empty = the embedded stdlib corpus (kind=text)."""
    tokenizer: str = "bytes"
    """Text data: "bytes" (a token per byte), "bpe" (byte-level BPE trained on the run's training text with
    data.vocab_size ids, cached and reused) or the path of a local tokenizer.json (or a directory holding one)."""
    vocab_size: int = 4096
    """tokenizer = "bpe": ids in the trained vocabulary (>= 257: 256 bytes and the end-of-text token)."""
    format: Literal["auto", "text", "json", "parquet"] = "auto"
    """kind = "local": file format (auto: from the suffixes; text files are one document each)."""
    text_field: str = "text"
    """kind = "local": the JSONL field or Parquet column that holds the text."""
    partition: Literal["iid", "dirichlet", "pathological"] = "iid"
    """How the training set is split across workers (or federated clients)."""
    alpha: float = 0.5
    """Dirichlet concentration for partition=dirichlet; smaller is more skewed."""
    max_bytes: int = 8_000_000
    """Cap on the embedded or given text corpus, in bytes (files taken in sorted order)."""
    val_percent: int = 5
    """Share of text files (by a hash of their path) held out for validation."""

    def validate(self) -> None:
        _check(self.alpha > 0, "data.alpha", self.alpha, "must be > 0")
        _check(self.max_bytes >= 10_000, "data.max_bytes", self.max_bytes, "must be >= 10000")
        _check(0 < self.val_percent < 50, "data.val_percent", self.val_percent, "must be in 1..49")
        if self.kind == "npz":
            _check(bool(self.path), "data.path", self.path, "data.kind = 'npz' needs the path of a .npz file")
        if self.kind == "local":
            _check(
                bool(self.path),
                "data.path",
                self.path,
                "data.kind = 'local' needs a local file, directory or glob of text, JSONL or Parquet files",
            )
        is_glob = self.kind == "local" and any(char in self.path for char in "*?[")
        if self.path and not is_glob and not Path(self.path).expanduser().exists():
            raise ConfigError("data.path", self.path, "no such file or directory")
        self._validate_tokenizer()

    def _validate_tokenizer(self) -> None:
        text = self.kind in ("text", "local")
        _check(
            text or self.tokenizer == "bytes",
            "data.tokenizer",
            self.tokenizer,
            f"a tokenizer is for text data; data.kind = {self.kind!r} allows only 'bytes'",
        )
        _check(
            self.vocab_size >= 257,
            "data.vocab_size",
            self.vocab_size,
            "must be >= 257 (256 bytes + end-of-text)",
        )
        if self.tokenizer not in ("bytes", "bpe"):
            _check(
                Path(self.tokenizer).expanduser().exists(),
                "data.tokenizer",
                self.tokenizer,
                "no such file or directory; allowed: 'bytes', 'bpe' or the path of a local tokenizer.json "
                "(or a directory holding one)",
            )
        if self.partition == "pathological" and self.kind == "text":
            raise ConfigError("data.partition", self.partition, "text data allows 'iid' or 'dirichlet'")
        if self.partition != "iid" and self.kind == "local":
            raise ConfigError(
                "data.partition", self.partition, "local datasets are dealt out window by window: 'iid' only"
            )


@dataclass(kw_only=True)
class TrainConfig:
    """The inner loop every worker runs."""

    num_steps: int = 400
    """Inner optimizer steps per worker."""
    batch_size: int = 8
    """Sequences (or examples) per inner step on one worker."""
    lr: float = 1e-3
    """Peak learning rate of the inner AdamW optimizer."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Linear learning-rate warm-up, then cosine decay to lr * min_lr_ratio."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    grad_clip: float = 1.0
    """Gradient-norm clip for the inner step (0 disables)."""
    eval_every: int = 50
    """Evaluate the global model every this many inner steps (and at the end)."""
    num_eval_batches: int = 8
    """Batches in one evaluation."""
    report_every: int = 50
    """ddp and gossip, which have no outer round: inner steps between round records (and checkpoint
    boundaries, and gossip's consensus measurement). The DiLoCo family and fedavg report once per outer
    round, every algorithm.num_inner_steps steps, and reject any other value here."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16: forward and backward in bfloat16 (autocast; FSDP2's param_dtype when sharded) over
    fp32 master weights; the inner optimizer, the outer state and the pseudo-gradients stay fp32."""

    def validate(self) -> None:
        _check(self.num_steps >= 1, "train.num_steps", self.num_steps, "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _check(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        _check(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "must be >= 0 (0 disables)")
        _check(self.eval_every >= 1, "train.eval_every", self.eval_every, "must be >= 1")
        _check(self.num_eval_batches >= 1, "train.num_eval_batches", self.num_eval_batches, "must be >= 1")
        _check(self.report_every >= 1, "train.report_every", self.report_every, "must be >= 1")


ALGORITHMS = ("ddp", "diloco", "fedavg", "dilocox", "streaming", "gossip")
OVERLAP_RULES = ("naive", "eager", "delayed")
"""The values of ``algorithm.overlap`` (kept equal to the field's Literal by a test)."""


@dataclass(kw_only=True)
class AlgorithmConfig:
    """When workers talk and how the outer update is formed."""

    name: Literal["ddp", "diloco", "fedavg", "dilocox", "streaming", "gossip"] = "diloco"
    """Training algorithm."""
    num_inner_steps: int = 50
    """H: inner steps between outer synchronisations (DiLoCo family, fedavg); only that. ddp and gossip
    do not read it (their record period is train.report_every)."""
    outer_lr: float = 0.0
    """Outer optimizer learning rate (DiLoCo: SGD with Nesterov momentum); 0 = the rule of
    :func:`outer_recipe` for this run's number of workers M and H (at H >= 30: 0.5 sqrt(M), at most 1)."""
    outer_momentum: float = -1.0
    """Outer optimizer momentum in [0, 1) (0 disables); negative = the rule of :func:`outer_recipe` (0.7 at
    H >= 30, less for shorter rounds)."""
    nesterov: bool = True
    """Use Nesterov momentum in the outer optimizer."""
    num_warmup_rounds: int = 0
    """Rounds at the start that use num_warmup_inner_steps instead of H (DiLoCo warm-up)."""
    num_warmup_inner_steps: int = 1
    """Inner steps per warm-up round."""
    delay: int = 0
    """0: synchronous outer step; 1: the all-reduce overlaps the next round (one-step delay)."""
    overlap: Literal["naive", "eager", "delayed"] = "delayed"
    """With delay = 1, where a worker starts the next round while the average is on the wire (one of
    OVERLAP_RULES; farsync.algorithms.overlap): naive and eager are Kale et al. 2025's Algorithms 2 and 3
    (arXiv 2502.12996), delayed is farsync's own rule after DiLoCoX's description."""
    num_fragments: int = 4
    """Streaming DiLoCo: number of parameter fragments P."""
    streaming_tau: int = 5
    """Streaming DiLoCo: inner steps a fragment's all-reduce may overlap."""
    streaming_alpha: float = 0.5
    """Streaming DiLoCo: mixing weight of the local fragment (theta = alpha*local + (1-alpha)*global)."""

    def validate(self) -> None:
        _check(self.num_inner_steps >= 1, "algorithm.num_inner_steps", self.num_inner_steps, "H must be >= 1")
        _check(
            self.outer_lr >= 0, "algorithm.outer_lr", self.outer_lr, "must be >= 0 (0 = outer_recipe's rule)"
        )
        _check(
            self.outer_momentum < 1,
            "algorithm.outer_momentum",
            self.outer_momentum,
            "must be in [0, 1) (negative = outer_recipe's rule)",
        )
        _check(
            self.num_warmup_rounds >= 0, "algorithm.num_warmup_rounds", self.num_warmup_rounds, "must be >= 0"
        )
        _check(
            self.num_warmup_inner_steps >= 1,
            "algorithm.num_warmup_inner_steps",
            self.num_warmup_inner_steps,
            "must be >= 1",
        )
        _check(self.delay in (0, 1), "algorithm.delay", self.delay, "allowed: 0 or 1")
        _check(self.num_fragments >= 1, "algorithm.num_fragments", self.num_fragments, "must be >= 1")
        _check(self.streaming_tau >= 0, "algorithm.streaming_tau", self.streaming_tau, "must be >= 0")
        _check(
            self.name != "streaming" or self.streaming_tau < self.num_inner_steps,
            "algorithm.streaming_tau",
            self.streaming_tau,
            f"must be < algorithm.num_inner_steps ({self.num_inner_steps})",
        )
        _check(
            0 <= self.streaming_alpha <= 1,
            "algorithm.streaming_alpha",
            self.streaming_alpha,
            "must be in [0, 1]",
        )

    def with_outer_recipe(
        self, num_workers: int, *, error_feedback_momentum: bool = False
    ) -> AlgorithmConfig:
        """This section with ``outer_lr`` / ``outer_momentum`` left to the rule replaced by
        :func:`outer_recipe` (``num_workers``, ``num_inner_steps``, the overlap rule when the outer step is
        overlapped: ``delay = 1`` or DiLoCoX, and ``error_feedback_momentum``); explicit values are kept."""
        overlapped = self.delay == 1 or self.name == "dilocox"
        lr, momentum = outer_recipe(
            num_workers,
            self.num_inner_steps,
            self.overlap if overlapped else None,
            error_feedback_momentum=error_feedback_momentum,
        )
        return dataclasses.replace(
            self,
            outer_lr=self.outer_lr if self.outer_lr > 0 else lr,
            outer_momentum=self.outer_momentum if self.outer_momentum >= 0 else momentum,
        )


OVERLAP_RECIPE_SCALE: dict[str, tuple[float, float]] = {
    "naive": (0.5, 0.5 / 0.7),
    "eager": (0.7, 0.3 / 0.7),
    "delayed": (1.0, 1.0),
}
"""Overlap rule -> (factor on the synchronous rule's outer lr, factor on its momentum) in :func:`outer_recipe`.

Each rule's best (lr, momentum) in ``farsync bench quality``'s overlap sweep at M = 4, H = 30, where the
synchronous rule gives 1.0 / 0.7 (``benchmarks/results/quality.md``, overlap section): naive 0.5 / 0.5 (of
1.0 / 0.7, 0.5 / 0.7, 0.5 / 0.5, 0.7 / 0.3), eager 0.7 / 0.3 (of 1.0 / 0.7, 0.85 / 0.3, 0.7 / 0.3,
0.5 / 0.5), delayed 1.0 / 0.7 (of 1.0 / 0.7, 0.7 / 0.3).
The published rules step with pseudo-gradients measured one outer step behind, and at the synchronous
recipe they oscillate (naive and eager at 1.0 / 0.7 end at 5.67 and 3.08 against 2.02 synchronous);
lowering the momentum steadies them more than lowering the lr alone (the paper's lever: naive 0.5 / 0.7
ends at 2.95). Measured at one cell only; other M and H get the same factors."""


SPARSE_OUTER_LR = 2.0
"""Outer SGD learning rate (no momentum) when an error-feedback buffer replaces outer momentum (SparseLoCo).

The paper's is 1; measured in bench quality's regime (M = 4, H = 30, density 1/64, decay 0.95): lr 1 ended
at 2.2570 (+12.0% over synchronous DiLoCo), 2 at 1.9526 (-3.1%), 3 at 1.9677, 4 at 2.0320
(``benchmarks/results/sparseloco.md``). The paper's average is a plain mean over workers; with sparse
selections that rarely coincide, each sent entry is divided by M, and a larger outer lr restores it (the
authors' code averages each entry over the workers that sent it instead). Measured at M = 4 only."""


def outer_recipe(
    num_workers: int,
    num_inner_steps: int,
    overlap: str | None = None,
    *,
    error_feedback_momentum: bool = False,
) -> tuple[float, float]:
    """DiLoCo's default outer learning rate and Nesterov momentum for M workers and H inner steps, and for a
    one-round overlap rule (``overlap``, one of OVERLAP_RULES; None: the synchronous outer step).

    ``error_feedback_momentum`` (the reducer's decaying error-feedback buffer stands in for outer momentum:
    ``compression.kind = "sparseloco"`` or ``"sparseloco_dct"``): plain SGD without outer momentum, as
    SparseLoCo's outer step (Sarfi et al. 2025, arXiv 2508.15706), at :data:`SPARSE_OUTER_LR` (one worker: 1). In
    ``bench quality``'s regime (M = 4, H = 30; ``benchmarks/sparseloco_sweep.py``) lr 2 did better than the
    paper's 1 (1.9526 vs 2.2570 at 1.56% density; 3: 1.9677, 4: 2.0320); the rule keeps the paper's value.

    With ``s = min(1, H / 30)``: ``momentum = 0.7 s`` and ``lr = 1 + (min(1, 0.5 sqrt(M)) - 1) s``, i.e. at
    H >= 30 momentum 0.7 and lr 0.5 sqrt(M) capped at 1 (M = 2: 0.71, M >= 4: 1.0), moving linearly towards
    plain averaging (lr 1, no momentum, what H = 1 amounts to) as H shrinks.

    Measured by ``farsync bench quality`` (H = 30, 40 rounds, ~18 tokens per parameter; the table is in
    ``benchmarks/results/quality.md``): at M = 4, momentum 0.7 with lr 1.0 beat 0.5 and 0.9 (lr 0.7 to 1.5);
    at M = 2, lr 0.7 beat 1.0; at M = 8, lr 1.0 beat 1.4; at DiLoCo's own best inner learning rate (a
    quarter of DDP's) M = 4 again preferred lr 1.0 to 0.7 and 1.4. The paper default 0.7 / 0.9 was worse at M = 4:
    with tens of rounds, not thousands, momentum 0.9 builds up too slowly (issue 11's 30-round probe at
    H = 10: 0.7 / 0.5 ended at 2.393, 0.7 / 0.9 at 2.610). The best outer lr rising with M agrees with
    Charles et al. 2025 (arXiv 2503.09799). Below H = 30 the rule is an interpolation, not a measurement.

    One worker (M = 1) gets outer lr 1 and no momentum: the outer step then lands exactly on the worker's
    weights, so the run is plain training and cannot lose to it (pinned by
    ``tests/algorithms/test_diloco_single_worker.py``). Measured in bench quality's regime (H = 30, 1,200
    steps, inner lr 8e-3): 1.0 / 0 ended at 1.5886, the M >= 2 formula's 0.5 / 0.7 at 1.6349, 1.0 / 0.3 at
    1.7511, 1.3 / 0 at 1.7593; with one worker there is no averaging to smooth, and outer momentum or
    extrapolation only add lag or overshoot.

    An overlapped outer step applies each average one round late, and a late step with a large outer lr and
    momentum overshoots: the synchronous recipe is scaled by :data:`OVERLAP_RECIPE_SCALE` for the rule.
    """
    if error_feedback_momentum:
        return (1.0 if num_workers <= 1 else SPARSE_OUTER_LR), 0.0
    if num_workers <= 1:
        lr, momentum = 1.0, 0.0
    else:
        s = min(1.0, max(1, num_inner_steps) / 30)
        lr = 1.0 + (min(1.0, 0.5 * math.sqrt(max(1, num_workers))) - 1.0) * s
        momentum = 0.7 * s
    if overlap is not None:
        lr_scale, momentum_scale = OVERLAP_RECIPE_SCALE[overlap]
        lr, momentum = lr * lr_scale, momentum * momentum_scale
    return round(lr, 2), round(momentum, 2)


COMPRESSION_KINDS = (
    "none",
    "fp16",
    "bf16",
    "int8",
    "int4",
    "uint8_lookup",
    "topk",
    "lowrank",
    "sparseloco",
    "sparseloco_dct",
)
"""The one list of compression kinds. ``farsync.compress.KINDS`` (what each kind puts on the wire) is kept
equal to it by a test: the config and ``compress`` are independent leaves and cannot import each other."""


@dataclass(kw_only=True)
class CompressionConfig:
    """How pseudo-gradients are compressed before they go on the wire."""

    kind: str = "none"
    """What goes on the wire, one of COMPRESSION_KINDS; the same bytes with or without robust aggregation:
    none (fp32), fp16, bf16, int8, int4, uint8_lookup, topk, lowrank (P and Q factors at `bits`),
    sparseloco (SparseLoCo: chunked top-k of `topk_fraction` per chunk, 2-bit values, error feedback decayed
    by `error_decay`, all-gathered; `bits` and `error_feedback` do not apply), sparseloco_dct (the same with
    the top-k taken among each chunk's DCT-II coefficients, DeMo's chunk transform)."""
    bits: int = 8
    """Bit width for quantization (and for low-rank factors): 4, 8 or 16."""
    rank: int = 8
    """Low-rank: rank of the factors (upper bound when adaptive)."""
    topk_fraction: float = 0.01
    """Top-k: fraction of entries kept (sparseloco: of every chunk)."""
    chunk_size: int = 64
    """sparseloco: side of the square tiles a matrix is cut into for top-k (64: 4,096 values, the paper's);
    1-D tensors in runs of at most this many values."""
    error_decay: float = 0.95
    """sparseloco: beta, the decay of the error-feedback buffer (e <- beta e + pseudo-gradient); paper 0.95."""
    energy_fraction: float = 0.9
    """Adaptive low-rank: share of the pseudo-gradient's energy the chosen rank keeps, in (0, 1]."""
    adaptive: bool = False
    """Plan every round from the link (DiLoCoX): sync or overlap, fp32, dense or low-rank values at 32..2 bits,
    and H (farsync.compress.adaptive); `rank` and `bits` are then unused."""
    error_feedback: bool = False
    """Carry the compression error into the next round (per worker residual)."""
    block_size: int = 64
    """Block size for blockwise absmax quantization."""
    sync_fraction: float = 0.05
    """Adaptive: a round runs synchronously (no delay) when its fp32, else a dense quantized (>= min_bits),
    all-reduce takes at most this share of its compute, in [0, 1)."""
    min_bits: int = 4
    """Adaptive: quality floor, the narrowest width the planner may send: 2, 4, 8, 16 or 32."""
    min_rank_fraction: float = 0.125
    """Adaptive: quality floor, the smallest low-rank rank as a share of min(rows, cols), in (0, 1]."""
    min_compression_ratio: float = 1.0
    """Adaptive: a round sends at most 1/this of the fp32 bytes (1 = only what the link needs)."""
    adapt_inner_steps: bool = False
    """Adaptive: when the floor's message does not hide behind H steps, grow the next round's H until it does."""
    num_inner_steps_max: int = 0
    """Adaptive with adapt_inner_steps: the largest H (0 = 4 x algorithm.num_inner_steps)."""

    def validate(self) -> None:
        _check(
            self.kind in COMPRESSION_KINDS,
            "compression.kind",
            self.kind,
            "allowed: " + ", ".join(repr(kind) for kind in COMPRESSION_KINDS),
        )
        _check(self.bits in (4, 8, 16), "compression.bits", self.bits, "allowed: 4, 8 or 16")
        _check(self.rank >= 1, "compression.rank", self.rank, "must be >= 1")
        _check(
            0 < self.topk_fraction <= 1, "compression.topk_fraction", self.topk_fraction, "must be in (0, 1]"
        )
        _check(
            0 < self.energy_fraction <= 1,
            "compression.energy_fraction",
            self.energy_fraction,
            "must be in (0, 1]",
        )
        _check(self.block_size >= 8, "compression.block_size", self.block_size, "must be >= 8")
        _check(self.chunk_size >= 1, "compression.chunk_size", self.chunk_size, "must be >= 1")
        _check(0 <= self.error_decay <= 1, "compression.error_decay", self.error_decay, "must be in [0, 1]")
        _check(
            0 <= self.sync_fraction < 1, "compression.sync_fraction", self.sync_fraction, "must be in [0, 1)"
        )
        _check(
            self.min_bits in (2, 4, 8, 16, 32),
            "compression.min_bits",
            self.min_bits,
            "allowed: 2, 4, 8, 16, 32",
        )
        _check(
            0 < self.min_rank_fraction <= 1,
            "compression.min_rank_fraction",
            self.min_rank_fraction,
            "must be in (0, 1]",
        )
        _check(
            self.min_compression_ratio >= 1,
            "compression.min_compression_ratio",
            self.min_compression_ratio,
            "must be >= 1",
        )
        _check(
            self.num_inner_steps_max >= 0,
            "compression.num_inner_steps_max",
            self.num_inner_steps_max,
            "must be >= 0 (0 = 4 x algorithm.num_inner_steps)",
        )


_RATE = {"parse": parse_bandwidth}
_DURATION = {"parse": parse_duration}


@dataclass(kw_only=True)
class NetworkConfig:
    """The emulated wide-area link between workers.

    Rates are bits per second and durations seconds, as numbers, from the moment the config is built: TOML,
    ``--set`` and the constructor also take strings ('1Gbit', '100Mbps', '20ms'), parsed once, here.
    """

    bandwidth: float = field(default=1e9, metadata=_RATE)
    """Link rate per worker in bits/s, e.g. 1e9 or '1Gbit', '100Mbit'."""
    latency: float = field(default=0.0, metadata=_DURATION)
    """One-way latency per message in seconds, e.g. 0.05 or '50ms'."""
    emulation: Literal["sleep", "virtual", "off"] = "sleep"
    """sleep: collectives really take the link's time; virtual: the time is added to a simulated clock
    (for long benchmarks); off: no emulation (a real link, e.g. across hosts)."""
    step_time_s: float = 0.0
    """Virtual clock only: model every inner step as taking this many seconds of compute instead of measuring
    it (0: measured). Makes emulated wall-clock independent of this machine's load (comm/clock.py)."""
    worker_bandwidth: dict[str, float] = field(
        default_factory=dict, metadata={"parse": _parse_table(parse_bandwidth)}
    )
    """Per-worker overrides in bits/s, {"2" = "100Mbit"}; a collective runs at its slowest member's rate."""
    worker_latency: dict[str, float] = field(
        default_factory=dict, metadata={"parse": _parse_table(parse_duration)}
    )
    """Per-worker latency overrides in seconds, {"2" = "80ms"}."""
    intra_bandwidth: float = field(default=1e11, metadata=_RATE)
    """Pipeline stages: link inside a replica (activations) in bits/s, e.g. '100Gbit'; the cross-replica link is
    `bandwidth`."""

    def __post_init__(self) -> None:
        # Strings given to the constructor become numbers here too (numbers pass through unchanged).
        for f in dataclasses.fields(self):
            parse = f.metadata.get("parse")
            if parse is not None:
                setattr(self, f.name, parse(getattr(self, f.name), f"network.{f.name}"))

    def validate(self, num_workers: int) -> None:
        _check(self.step_time_s >= 0, "network.step_time_s", self.step_time_s, "must be >= 0 (0: measured)")
        _check(
            self.step_time_s == 0 or self.emulation == "virtual",
            "network.step_time_s",
            self.step_time_s,
            f"a modelled step time needs network.emulation = 'virtual' (got {self.emulation!r})",
        )
        for table in ("worker_bandwidth", "worker_latency"):
            for rank in getattr(self, table):
                _check(
                    rank.isdigit() and int(rank) < num_workers,
                    f"network.{table}.{rank}",
                    rank,
                    f"worker rank must be in 0..{num_workers - 1}",
                )

    @property
    def bandwidth_bps(self) -> float:
        """``bandwidth`` (bits/s)."""
        return self.bandwidth

    @property
    def latency_s(self) -> float:
        """``latency`` (seconds)."""
        return self.latency


AGGREGATION_RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip", "robust")

ROBUST_PRESET: dict[str, Any] = {
    "rule": "centered_clip",
    "preaggregation": "nnm",
    "adaptive_tau": True,
    "tau_scale": "neighbors",
    "tau": 1.0,
}
"""What ``aggregation.rule = "robust"`` selects: the defence with the best worst case in
``farsync bench byzantine`` (CenteredClip, radius from the distance to the (n - f)-th nearest update,
after nearest-neighbour mixing; benchmarks/results/byzantine.md and docs/robust.md have the table, and a
test keeps this equal to the benchmark's choice). It sets these fields whatever they say."""


@dataclass(kw_only=True)
class AggregationConfig:
    """How updates from workers are combined (robust rules defend against Byzantine workers)."""

    rule: Literal["mean", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip", "robust"] = "mean"
    """Aggregation rule applied in every averaging step; robust: the recommended defence (ROBUST_PRESET)."""
    beta: float = 0.1
    """Trimmed mean: fraction trimmed from each end."""
    f: int = -1
    """Byzantine workers tolerated (Krum, NNM, the neighbors radius); -1: as many as the rule allows."""
    m: int = 1
    """Multi-Krum: number of selected updates averaged."""
    tau: float = 1.0
    """CenteredClip: clipping radius."""
    num_iters: int = 20
    """CenteredClip: maximum iterations."""
    adaptive_tau: bool = True
    """CenteredClip: tau is a multiple of a spread of the shard updates (tau_scale), not an absolute radius."""
    tau_scale: Literal["median", "neighbors"] = "median"
    """CenteredClip with adaptive_tau: the spread tau multiplies: median distance to the coordinate-wise
    median, or median distance to the (n - f)-th nearest update (attackers cannot inflate it)."""
    clip_start: Literal["median", "previous"] = "median"
    """CenteredClip: start from the coordinate-wise median, or from the previous round's aggregate
    (CenteredClip with history, Karimireddy et al. 2021; pair it with num_iters 1 to 3)."""
    worker_momentum: float = 0.0
    """Robust path: each worker sends its momentum m <- beta m + update instead of its update (Karimireddy
    et al. 2021), beta in [0, 1); 0 disables. Turn the optimizer's own momentum off with it."""
    preaggregation: Literal["none", "nnm", "bucketing"] = "none"
    """Applied before the rule: nearest-neighbour mixing (Allouah et al. 2023) or bucketing (Karimireddy
    et al. 2022)."""
    bucket_size: int = 2
    """Bucketing: updates averaged per bucket."""
    verify_fraction: float = 0.0
    """Share of the butterfly's shard owners whose aggregate random peers re-compute each round (BTARD's
    verification; a caught owner is excluded and its shard redone); 0 disables."""
    verify_seed: int = 0
    """Mixed into the shared random draw of the owners checked and their verifiers."""
    max_norm: float = 0.0
    """Reject updates whose L2 norm exceeds this (0 disables)."""
    max_strikes: int = 3
    """A worker whose updates were rejected this many times is excluded."""
    outlier_ratio: float = 0.0
    """Strike a worker whose shard lies over this many median distances from the robust result (0 disables)."""

    def resolved(self) -> AggregationConfig:
        """This section with ``rule = "robust"`` replaced by :data:`ROBUST_PRESET` (itself otherwise)."""
        return dataclasses.replace(self, **ROBUST_PRESET) if self.rule == "robust" else self

    @property
    def needs_robust_reducer(self) -> bool:
        """Whether these settings need the robust reducer (anything but the plain, unchecked mean)."""
        return (
            self.rule != "mean"
            or self.preaggregation != "none"
            or self.max_norm > 0
            or self.outlier_ratio > 0
            or self.verify_fraction > 0
            or self.worker_momentum > 0
        )

    def validate(self) -> None:
        _check(0 <= self.beta < 0.5, "aggregation.beta", self.beta, "must be in [0, 0.5)")
        _check(
            self.outlier_ratio >= 0,
            "aggregation.outlier_ratio",
            self.outlier_ratio,
            "must be >= 0 (0 disables)",
        )
        _check(self.f >= -1, "aggregation.f", self.f, "must be >= 0, or -1 (as many as the rule allows)")
        _check(self.bucket_size >= 1, "aggregation.bucket_size", self.bucket_size, "must be >= 1")
        _check(
            0 <= self.verify_fraction <= 1,
            "aggregation.verify_fraction",
            self.verify_fraction,
            "must be in [0, 1] (0 disables)",
        )
        _check(self.m >= 1, "aggregation.m", self.m, "must be >= 1")
        _check(
            0 <= self.worker_momentum < 1,
            "aggregation.worker_momentum",
            self.worker_momentum,
            "must be in [0, 1) (0 disables)",
        )
        _check(
            self.clip_start == "median" or self.verify_fraction == 0,
            "aggregation.clip_start",
            self.clip_start,
            "'previous' cannot be verified yet: set aggregation.verify_fraction = 0",
        )
        _check(self.tau > 0, "aggregation.tau", self.tau, "must be > 0")
        _check(self.num_iters >= 1, "aggregation.num_iters", self.num_iters, "must be >= 1")
        _check(self.max_norm >= 0, "aggregation.max_norm", self.max_norm, "must be >= 0 (0 disables)")
        _check(self.max_strikes >= 1, "aggregation.max_strikes", self.max_strikes, "must be >= 1")


@dataclass(kw_only=True)
class ByzantineConfig:
    """Simulated attackers, to test the defences."""

    workers: list[int] = field(default_factory=list)
    """Ranks that attack."""
    attack: str = "sign_flip"
    """Built-in attack name or 'package.module:function'."""
    scale: float = 1000.0
    """sign_flip multiplier / gaussian std / constant value."""
    params: dict[str, int | float | str] = field(default_factory=dict)
    """Keyword parameters of the attack factory, e.g. {eps = 0.1} (ipm), {z = 1.5} (alie); win over scale."""

    def validate(self, num_workers: int) -> None:
        for rank in self.workers:
            _check(
                0 <= rank < num_workers,
                "byzantine.workers",
                self.workers,
                f"ranks must be in 0..{num_workers - 1}",
            )


@dataclass(kw_only=True)
class ParallelConfig:
    """Pipeline stages inside a replica (DiLoCoX dual optimizer)."""

    num_stages: int = 1
    """Stages S per replica; num_workers must be a multiple of S."""
    num_microbatches: int = 1
    """Microbatches per inner step; must divide train.batch_size."""
    schedule: Literal["gpipe", "1f1b"] = "1f1b"
    """Pipeline schedule."""
    num_shards: int = 1
    """FSDP2 shards N per replica: each replica is N ranks that shard its model with ``fully_shard`` and
    split its batch; num_workers must be a multiple of N (replicas = num_workers / N). Processes only."""

    def validate(self) -> None:
        _check(self.num_stages >= 1, "parallel.num_stages", self.num_stages, "must be >= 1")
        _check(self.num_microbatches >= 1, "parallel.num_microbatches", self.num_microbatches, "must be >= 1")
        _check(self.num_shards >= 1, "parallel.num_shards", self.num_shards, "must be >= 1")


@dataclass(kw_only=True)
class ElasticConfig:
    """Membership, heartbeats and timeouts for runs whose workers come and go."""

    min_workers: int = 1
    """Below this many live workers, training waits."""
    heartbeat_interval_s: float = 1.0
    """How often a worker reports that it is alive."""
    failure_timeout_s: float = 5.0
    """A worker silent for this long is considered dead (several heartbeat intervals)."""
    collective_timeout_s: float = 30.0
    """A collective that has not finished by then is aborted (must exceed the slowest sync on the link)."""
    coordinator_timeout_s: float = 60.0
    """A worker that cannot reach its coordinator for this long gives up with a message (exit code 5)."""

    def validate(self) -> None:
        _check(self.min_workers >= 1, "elastic.min_workers", self.min_workers, "must be >= 1")
        _check(
            self.coordinator_timeout_s > 0,
            "elastic.coordinator_timeout_s",
            self.coordinator_timeout_s,
            "must be > 0",
        )
        _check(
            self.heartbeat_interval_s > 0,
            "elastic.heartbeat_interval_s",
            self.heartbeat_interval_s,
            "must be > 0",
        )
        _check(
            self.failure_timeout_s >= 2 * self.heartbeat_interval_s,
            "elastic.failure_timeout_s",
            self.failure_timeout_s,
            f"must be >= 2 x elastic.heartbeat_interval_s ({self.heartbeat_interval_s})",
        )
        _check(
            self.collective_timeout_s > 0,
            "elastic.collective_timeout_s",
            self.collective_timeout_s,
            "must be > 0",
        )


@dataclass(kw_only=True)
class FederatedConfig:
    """Federated averaging with many clients sampled per round."""

    num_clients: int = 0
    """Clients N (0 = one client per worker); may exceed the number of workers."""
    client_fraction: float = 1.0
    """Fraction C of clients sampled per round, in (0, 1]."""
    local_epochs: int = 1
    """E: local epochs per round (0 = federated.local_steps steps instead)."""
    local_steps: int = 50
    """Local steps per round when local_epochs = 0 (batches drawn as in an epoch); rejected otherwise."""
    batch_size: int = 10
    """B: local batch size (0 = the client's whole data, FedSGD)."""
    num_rounds: int = 100
    """Communication rounds when num_clients > 0 (the federated driver's loop length)."""

    def validate(self) -> None:
        _check(self.num_clients >= 0, "federated.num_clients", self.num_clients, "must be >= 0")
        _check(
            0 < self.client_fraction <= 1,
            "federated.client_fraction",
            self.client_fraction,
            "must be in (0, 1]",
        )
        _check(self.local_epochs >= 0, "federated.local_epochs", self.local_epochs, "must be >= 0")
        _check(self.local_steps >= 1, "federated.local_steps", self.local_steps, "must be >= 1")
        _check(
            self.local_epochs == 0 or self.local_steps == FederatedConfig().local_steps,
            "federated.local_steps",
            self.local_steps,
            f"used only with federated.local_epochs = 0 (local_epochs = {self.local_epochs} sets the work)",
        )
        _check(self.batch_size >= 0, "federated.batch_size", self.batch_size, "must be >= 0 (0 = full batch)")
        _check(self.num_rounds >= 1, "federated.num_rounds", self.num_rounds, "must be >= 1")


@dataclass(kw_only=True)
class GossipConfig:
    """Serverless gossip learning over a topology."""

    topology: Literal["ring", "torus", "exponential", "random_regular"] = "ring"
    """Who mixes with whom."""
    degree: int = 2
    """k for random_regular."""
    comm_every: int = 1
    """Mix with neighbours every this many inner steps."""
    late_schedule: bool = False
    """Communicate more often late in training (halves the interval in the last half)."""
    final_merge: bool = True
    """One global average at the end."""
    variance_correction: bool = False
    """Rescale mixed weight matrices to the inputs' mean variance (Tian et al. 2024, arXiv 2404.04616)."""
    mix_optimizer_state: bool = False
    """Also mix the inner optimizer's moment tensors with the same weights (keeps Adam's preconditioners in
    consensus under skewed data; triples the bytes with AdamW)."""

    def validate(self, num_workers: int) -> None:
        _check(self.comm_every >= 1, "gossip.comm_every", self.comm_every, "must be >= 1")
        if self.topology == "random_regular":
            _check(
                1 <= self.degree < num_workers and (self.degree * num_workers) % 2 == 0,
                "gossip.degree",
                self.degree,
                f"must be in 1..{num_workers - 1} with degree x num_workers even",
            )
        if self.topology == "torus":
            side = int(round(num_workers**0.5))
            rows = next((r for r in range(side, 1, -1) if num_workers % r == 0 and num_workers // r >= 2), 0)
            _check(
                rows >= 2,
                "gossip.topology",
                self.topology,
                f"a 2-D torus needs a composite worker count, got {num_workers}",
            )


@dataclass(kw_only=True)
class PrivacyConfig:
    """Differential privacy: clip each update and add Gaussian noise."""

    mode: Literal["off", "central", "local"] = "off"
    """central: noise at aggregation; local: noise at each client before sending."""
    clip_norm: float = 1.0
    """L2 bound on each update."""
    noise_multiplier: float = 1.0
    """Noise std divided by clip_norm."""
    delta: float = 1e-5
    """Target delta for the reported epsilon."""

    def validate(self) -> None:
        _check(self.clip_norm > 0, "privacy.clip_norm", self.clip_norm, "must be > 0")
        _check(self.noise_multiplier >= 0, "privacy.noise_multiplier", self.noise_multiplier, "must be >= 0")
        _check(0 < self.delta < 1, "privacy.delta", self.delta, "must be in (0, 1)")


@dataclass(kw_only=True)
class LoggingConfig:
    """Experiment trackers that receive every metric record beside ``metrics.jsonl``."""

    backends: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Any of "tensorboard" (event files under RUN_DIR/tensorboard) and "wandb" (a W&B run under
    RUN_DIR/wandb); install with ``pip install farsync[tensorboard,wandb]``. Empty: metrics.jsonl only."""
    wandb_project: str = "farsync"
    """W&B project name."""
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode: offline writes files only (``wandb sync`` uploads them later); online needs a login."""

    def validate(self) -> None:
        _check(bool(self.wandb_project), "logging.wandb_project", self.wandb_project, "must not be empty")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Checkpoints at outer-round boundaries."""

    every_rounds: int = 2
    """Write a checkpoint every this many outer rounds (0 disables)."""
    keep: int = 3
    """Checkpoints kept on disk (older ones are deleted)."""

    def validate(self) -> None:
        _check(
            self.every_rounds >= 0, "checkpoint.every_rounds", self.every_rounds, "must be >= 0 (0 disables)"
        )
        _check(
            self.keep >= 2,
            "checkpoint.keep",
            self.keep,
            "must be >= 2 (the newest may still be written by other workers)",
        )


@dataclass(kw_only=True)
class RLConfig:
    """RL post-training (``farsync rl``): the task, GRPO's loss, the inference workers and their mode."""

    task: Literal["arithmetic", "reversal", "sorting"] = "arithmetic"
    """Shipped task with an offline-verifiable reward (each has a held-out set)."""
    reward: str = ""
    """A user reward ``"package.module:function"`` taking (prompt, completion) text (empty: the task's)."""
    num_heldout: int = 200
    """Held-out problems for pass@1."""
    num_sft_steps: int = 400
    """Supervised warm-start steps on the task's format before RL (0: none); reported separately."""
    sft_lr: float = 3e-3
    """Learning rate of the warm-start."""
    sft_batch_size: int = 32
    """Problems per warm-start step."""
    sft_stop_at_pass: float = 0.0
    """Stop the warm-start early once greedy pass@1 on a validation set (training-stream problems, never
    the held-out ones), checked every 25 steps, reaches this (0: run all num_sft_steps)."""
    num_difficulty_problems: int = 0
    """Offline difficulty filtering (INTELLECT-2): sample this many training problems with the starting
    policy and train only on those it solves sometimes (0: off, the unfiltered training stream)."""
    num_difficulty_samples: int = 8
    """Completions per problem when measuring its pass rate."""
    num_steps: int = 150
    """GRPO trainer steps (each publishes a new policy version)."""
    num_groups_per_step: int = 8
    """Prompts (groups) per trainer step; tied groups count but are not trained on."""
    group_size: int = 8
    """Completions sampled per prompt."""
    lr: float = 3e-4
    """Learning rate of the RL AdamW optimizer."""
    loss: Literal["grpo", "dr_grpo", "two_sided"] = "two_sided"
    """GRPO (arXiv 2402.03300), Dr. GRPO (2503.20783) or INTELLECT-2's two-sided clipping (2505.07291)."""
    clip_low: float = 0.2
    """Ratio clipped below at 1 - clip_low."""
    clip_high: float = 0.2
    """Ratio clipped above at 1 + clip_high."""
    delta: float = 4.0
    """two_sided: upper bound on the ratio for negative advantages (> 1 + clip_high)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the warm-started reference policy (0: no reference kept)."""
    temperature: float = 1.0
    """Sampling temperature."""
    max_new_tokens: int = 6
    """Longest completion (the end token included)."""
    mode: Literal["sync", "async"] = "async"
    """Echo's modes: sync waits for each new policy; async samples on with bounded staleness."""
    max_staleness: int = 1
    """async: a rollout more than this many versions old is dropped and counted (sync uses 0)."""
    num_rollout_workers: int = 2
    """Inference workers."""
    num_trainers: int = 1
    """GRPO trainers (threads, one gloo group) that split every batch and average gradients with DDP; each
    pulls its own share of the groups."""
    worker_slowdowns: list[float] = field(default_factory=list)
    """Per-worker speed handicap (>= 1, one per worker; empty: all 1): emulates slower hardware."""
    worker_backend: Literal["process", "thread"] = "process"
    """Inference workers as separate processes (talking through the run directory) or threads."""
    eval_every: int = 25
    """Held-out pass@1 every this many RL steps (and at the start and end)."""
    rollout_timeout_s: float = 300.0
    """Longest wait for one batch of rollouts before the run fails with a clear error."""
    weight_transport: Literal["relay", "http"] = "relay"
    """How policy versions reach the workers (SHARDCAST-like sharded safetensors with sha256 checks): relay:
    a relay directory in the run directory; http: that directory served over HTTP on loopback."""
    shard_bytes: int = 4 * 1024 * 1024
    """Target size of one weight shard in bytes (tensors are batched into shards up to this size)."""
    verify: bool = True
    """TOPLOC-like rollout verification: workers sample with a replayable seed and attach an activation
    fingerprint; the trainer recomputes a share of rollouts and excludes a worker caught lying."""
    verify_fraction: float = 0.25
    """Share of rollouts the trainer recomputes (one forward pass each) when rl.verify is on."""

    def validate(self) -> None:
        for key in (
            "num_heldout",
            "num_steps",
            "num_groups_per_step",
            "num_rollout_workers",
            "num_trainers",
            "eval_every",
            "sft_batch_size",
            "max_new_tokens",
        ):
            _check(getattr(self, key) >= 1, f"rl.{key}", getattr(self, key), "must be >= 1")
        _check(self.num_sft_steps >= 0, "rl.num_sft_steps", self.num_sft_steps, "must be >= 0")
        _check(
            self.num_difficulty_problems >= 0,
            "rl.num_difficulty_problems",
            self.num_difficulty_problems,
            "must be >= 0 (0: no filtering)",
        )
        _check(
            self.num_difficulty_samples >= 2,
            "rl.num_difficulty_samples",
            self.num_difficulty_samples,
            "must be >= 2 (a pass rate strictly between 0 and 1 needs two samples)",
        )
        _check(
            0 <= self.sft_stop_at_pass <= 1, "rl.sft_stop_at_pass", self.sft_stop_at_pass, "must be in [0, 1]"
        )
        _check(
            self.group_size >= 2, "rl.group_size", self.group_size, "must be >= 2 (advantages are relative)"
        )
        for key in ("lr", "sft_lr", "temperature", "rollout_timeout_s"):
            _check(getattr(self, key) > 0, f"rl.{key}", getattr(self, key), "must be > 0")
        _check(self.shard_bytes >= 1024, "rl.shard_bytes", self.shard_bytes, "must be >= 1024")
        _check(0 < self.verify_fraction <= 1, "rl.verify_fraction", self.verify_fraction, "must be in (0, 1]")
        _check(0 <= self.clip_low < 1, "rl.clip_low", self.clip_low, "must be in [0, 1)")
        _check(self.clip_high >= 0, "rl.clip_high", self.clip_high, "must be >= 0")
        _check(
            self.delta > 1 + self.clip_high,
            "rl.delta",
            self.delta,
            f"must be > 1 + rl.clip_high ({1 + self.clip_high})",
        )
        _check(self.kl_coef >= 0, "rl.kl_coef", self.kl_coef, "must be >= 0")
        _check(self.max_staleness >= 0, "rl.max_staleness", self.max_staleness, "must be >= 0")
        _check(
            self.reward == "" or ":" in self.reward,
            "rl.reward",
            self.reward,
            "expected 'package.module:function' (a callable (prompt, completion) -> float) or empty",
        )
        _check(
            not self.worker_slowdowns or len(self.worker_slowdowns) == self.num_rollout_workers,
            "rl.worker_slowdowns",
            self.worker_slowdowns,
            f"needs one value per worker (rl.num_rollout_workers = {self.num_rollout_workers}) or none",
        )
        _check(
            all(v >= 1 for v in self.worker_slowdowns),
            "rl.worker_slowdowns",
            self.worker_slowdowns,
            "every value must be >= 1 (1 = full speed)",
        )
        _check(
            self.num_groups_per_step % self.num_trainers == 0,
            "rl.num_groups_per_step",
            self.num_groups_per_step,
            f"must be a multiple of rl.num_trainers ({self.num_trainers}): each trainer takes an equal share",
        )
        _check(
            self.mode == "async"
            or self.num_groups_per_step % (self.num_rollout_workers * self.num_trainers) == 0,
            "rl.num_groups_per_step",
            self.num_groups_per_step,
            f"sync mode splits a batch evenly over workers and trainers: must be a multiple of "
            f"rl.num_rollout_workers x rl.num_trainers ({self.num_rollout_workers * self.num_trainers})",
        )


@dataclass(kw_only=True)
class RunConfig:
    """A whole run. Load with :func:`load_config`; every section validates itself."""

    num_workers: int = 4
    """Data-parallel workers (processes)."""
    seed: int = 0
    """Seed for model init, data order and sampling."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def validate(self) -> None:
        _check(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.algorithm.validate()
        self.compression.validate()
        self.network.validate(self.num_workers)
        self.aggregation.validate()
        self.byzantine.validate(self.num_workers)
        self.parallel.validate()
        self.elastic.validate()
        self.federated.validate()
        self.gossip.validate(self.num_workers)
        self.privacy.validate()
        self.checkpoint.validate()
        self.logging.validate()
        self.rl.validate()
        self._validate_across_sections()
        self._validate_shards()

    def _validate_across_sections(self) -> None:
        _check(
            self.compression.kind not in ("sparseloco", "sparseloco_dct")
            or not self.aggregation.needs_robust_reducer,
            "compression.kind",
            self.compression.kind,
            "sends each worker's own sparse message; robust aggregation (aggregation.rule, max_norm, "
            "outlier_ratio) needs a dense kind (none, fp16, bf16, int8, int4, uint8_lookup, topk, lowrank)",
        )
        if self.model.kind in ("gpt", "hf"):
            _check(
                self.data.kind in ("text", "local"),
                "data.kind",
                self.data.kind,
                f"model.kind = '{self.model.kind}' needs data.kind = 'text' or 'local'",
            )
            _check(
                self.model.kind == "hf" or self.data.tokenizer == "bytes",
                "data.tokenizer",
                self.data.tokenizer,
                "farsync's GPT has a byte vocabulary (256 ids): use 'bytes', or model.kind = 'hf'",
            )
        else:
            _check(
                self.data.kind in ("digits", "npz"),
                "data.kind",
                self.data.kind,
                f"model.kind = '{self.model.kind}' needs data.kind = 'digits' or 'npz'",
            )
        stages = self.parallel.num_stages
        if stages > 1:
            _check(
                self.num_workers % stages == 0,
                "num_workers",
                self.num_workers,
                f"must be a multiple of parallel.num_stages ({stages})",
            )
            _check(
                stages <= self.model.num_layers,
                "parallel.num_stages",
                stages,
                f"must be <= model.num_layers ({self.model.num_layers})",
            )
            _check(
                self.model.kind == "gpt",
                "parallel.num_stages",
                stages,
                f"pipeline stages split a GPT's blocks; model.kind = {self.model.kind!r} allows only 1",
            )
        _check(
            self.train.batch_size % self.parallel.num_microbatches == 0,
            "parallel.num_microbatches",
            self.parallel.num_microbatches,
            f"must divide train.batch_size ({self.train.batch_size})",
        )
        _check(
            self.algorithm.name in ("ddp", "gossip") or self.train.report_every == TrainConfig().report_every,
            "train.report_every",
            self.train.report_every,
            f"only ddp and gossip report by steps; algorithm.name = {self.algorithm.name!r} reports once per "
            "outer round (every algorithm.num_inner_steps steps)",
        )
        _check(
            self.network.step_time_s == 0
            or not (self.algorithm.name == "fedavg" and self.federated.num_clients > 0),
            "network.step_time_s",
            self.network.step_time_s,
            "federated clients measure their compute; a modelled step time needs federated.num_clients = 0",
        )
        _check(
            self.elastic.min_workers <= self.num_workers,
            "elastic.min_workers",
            self.elastic.min_workers,
            f"must be <= num_workers ({self.num_workers})",
        )
        for key, name in (("aggregation.f", "f"),):
            if self.aggregation.rule in ("krum", "multi_krum") and self.aggregation.f >= 0:
                value = getattr(self.aggregation, name)
                _check(
                    self.num_workers > 2 * value + 2,
                    key,
                    value,
                    f"Krum needs num_workers > 2f + 2 (num_workers = {self.num_workers})",
                )

    def _validate_shards(self) -> None:
        """FSDP2 inside a replica: what composes with it (per-shard averaging) and what is refused."""
        _check(
            self.train.precision == "fp32" or self.parallel.num_stages == 1,
            "train.precision",
            self.train.precision,
            "pipeline stages train in fp32 only; use 'fp32' with parallel.num_stages > 1",
        )
        shards = self.parallel.num_shards
        if shards == 1:
            return
        key = "parallel.num_shards"
        _check(
            self.num_workers % shards == 0,
            "num_workers",
            self.num_workers,
            f"must be a multiple of parallel.num_shards ({shards}): replicas x shards",
        )
        _check(
            self.parallel.num_stages == 1,
            key,
            shards,
            "FSDP shards and pipeline stages do not combine; set parallel.num_stages = 1",
        )
        _check(
            self.train.batch_size % shards == 0,
            "train.batch_size",
            self.train.batch_size,
            f"must be a multiple of parallel.num_shards ({shards}): each shard takes an equal slice",
        )
        _check(
            self.model.kind in ("gpt", "hf"),
            key,
            shards,
            f"shards split a transformer's blocks; model.kind = {self.model.kind!r} allows only 1",
        )
        _check(
            self.algorithm.name in ("diloco", "dilocox", "streaming", "fedavg"),
            key,
            shards,
            f"algorithm.name = {self.algorithm.name!r} works on whole gradients or optimizer states; sharded "
            "replicas run diloco, dilocox, streaming or fedavg (each shard averaged with the same shard of "
            "the other replicas)",
        )
        _check(
            self.federated.num_clients == 0,
            "federated.num_clients",
            self.federated.num_clients,
            "sampled federated clients do not run sharded replicas; use 0 with parallel.num_shards > 1",
        )
        _check(
            self.privacy.mode == "off",
            "privacy.mode",
            self.privacy.mode,
            "differential privacy clips whole updates; a sharded replica sends shards, so use 'off'",
        )


# --------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, dict):
        return f"a {origin.__name__}"
    return f"a {getattr(tp, '__name__', str(tp))}"


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Checks ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    if tp is Any:  # free-form tables (a model shape, an attack's parameters): their consumer checks them
        return value
    origin = get_origin(tp)
    if origin is Literal:
        _check(value in get_args(tp), key, value, "allowed: " + ", ".join(repr(a) for a in get_args(tp)))
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        _check(isinstance(value, list), key, value, f"expected {_type_name(tp)}")
        return [_coerce(f"{key}[{i}]", item, item_tp) for i, item in enumerate(value)]
    if origin is dict:
        _, value_tp = get_args(tp)
        _check(isinstance(value, dict), key, value, "expected a table")
        return {str(k): _coerce(f"{key}.{k}", v, value_tp) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(key, value, f"expected {' or '.join(_type_name(a) for a in get_args(tp))}")
    if tp is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool), key, value, "expected a number"
        )
        return float(value)
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "expected an integer")
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, value, "expected true or false")
        return value
    if tp is str:
        _check(isinstance(value, str), key, value, "expected a string")
        return value
    raise ConfigError(key, value, f"unsupported type {tp}")


def _build(cls: type[Any], data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(key, value, "unknown key; allowed: " + ", ".join(sorted(fields)))
        tp = hints[name]
        parse = fields[name].metadata.get("parse")
        if parse is not None:  # a value with units (NetworkConfig): number or string, parsed once
            kwargs[name] = parse(value, key)
        elif dataclasses.is_dataclass(tp):
            _check(isinstance(value, dict), key, value, "expected a table")
            kwargs[name] = _build(typing.cast(type[Any], tp), value, f"{key}.")
        else:
            kwargs[name] = _coerce(key, value, tp)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError("--set", text, "expected key=value, e.g. --set algorithm.num_inner_steps=50")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as diloco is taken as a string
    return key.split("."), value


def _merge(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(".".join(path), value, f"'{part}' is not a section")
        target = node
    target[path[-1]] = value


def read_config_data(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The TOML file's tables (optional file) with the ``key=value`` overrides merged in, unchecked."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError("CONFIG", str(path), "no such config file")
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError("CONFIG", str(path), f"not valid TOML: {error}") from None
    for text in overrides or []:
        key_path, value = _parse_override(text)
        _merge(data, key_path, value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Reads TOML (optional), applies ``key=value`` overrides, builds and validates a :class:`RunConfig`."""
    config: RunConfig = _build(RunConfig, read_config_data(path, overrides), "")
    config.validate()
    return config


SectionT = typing.TypeVar("SectionT")


def build_section(cls: type[SectionT], data: dict[str, Any], prefix: str = "") -> SectionT:
    """A typed dataclass config defined outside this module (e.g. ``farsync.rl.swarm.SwarmSettings``) built
    from a TOML table with :func:`load_config`'s checks: unknown keys, wrong types and Literal values raise
    :class:`ConfigError` naming ``prefix + key``; nested dataclass fields are sub-tables. Then the section's
    own ``validate()``, if it has one; a ``ValueError`` it raises (worded ``"key = value: allowed"``) becomes
    a :class:`ConfigError`. This is how a section of a higher layer loads from TOML without this module
    importing it."""
    _check(isinstance(data, dict), prefix.rstrip(".") or "CONFIG", data, "expected a table")
    section: SectionT = _build(cls, data, prefix)
    validate = getattr(section, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as error:
            raise ConfigError.from_check(str(error)) from None
    return section


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_toml(config: RunConfig) -> str:
    """The resolved configuration as TOML that :func:`load_config` reads back to an equal config."""
    lines: list[str] = []
    sections: list[tuple[str, Any]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            sections.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    for name, section in sections:
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"


def section_to_toml(name: str, section: Any) -> str:
    """One dataclass section as a TOML table ``[name]``, nested dataclasses as sub-tables ``[name.field]``,
    which :func:`build_section` reads back to an equal section."""
    lines = [f"[{name}]"]
    nested: list[tuple[str, Any]] = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((f.name, value))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    text = "\n".join(lines) + "\n"
    for field_name, value in nested:
        text += "\n" + section_to_toml(f"{name}.{field_name}", value)
    return text
