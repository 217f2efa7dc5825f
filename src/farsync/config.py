"""Typed run configuration: dataclasses, TOML loading, ``--set`` overrides and one validation pass.

Every section is a small ``@dataclass(kw_only=True)``; components receive only the section they need.
A bad key, a wrong type or an impossible value raises :class:`ConfigError`, whose message names the key,
the value given and what is allowed. The CLI turns that into exit code 2 before anything starts.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
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
    "ModelConfig",
    "NetworkConfig",
    "ParallelConfig",
    "PrivacyConfig",
    "RunConfig",
    "TrainConfig",
    "config_to_toml",
    "load_config",
    "parse_bandwidth",
    "parse_duration",
]


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config error: {key} = {value!r}: {allowed}")


_BANDWIDTH_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_bandwidth(text: str, key: str = "network.bandwidth") -> float:
    """``"1Gbit"`` -> 1e9 bits per second. Units: bit, Kbit, Mbit, Gbit, Tbit (case-insensitive, optional ``/s``)."""
    normalized = re.sub(r"bps\s*$", "bit", str(text))  # "100Mbps" -> "100Mbit"
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-zA-Z]+)(?:/s)?\s*", normalized)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _BANDWIDTH_UNITS:
        raise ConfigError(key, text, "expected a rate such as '1Gbit', '100Mbit' or '500Kbit'")
    value = float(match.group(1)) * _BANDWIDTH_UNITS[unit]
    if value <= 0:
        raise ConfigError(key, text, "bandwidth must be > 0")
    return value


def parse_duration(text: str, key: str = "network.latency") -> float:
    """``"50ms"`` -> 0.05 seconds. Units: us, ms, s."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)\s*", str(text))
    if match is None:
        raise ConfigError(key, text, "expected a duration such as '50ms', '0s' or '200us', >= 0")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _check(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(key, value, allowed)


@dataclass(kw_only=True)
class ModelConfig:
    """Which model every worker trains."""

    kind: Literal["gpt", "mlp", "cnn"] = "gpt"
    """Byte-level GPT for text, MLP or CNN for classification."""
    num_layers: int = 4
    """Transformer blocks (GPT)."""
    width: int = 128
    """Embedding width (GPT) or first hidden width (MLP)."""
    num_heads: int = 4
    """Attention heads (GPT); must divide width."""
    context_length: int = 128
    """Tokens per training window (GPT)."""

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


@dataclass(kw_only=True)
class DataConfig:
    """Where the training data comes from and how it is split across workers."""

    kind: Literal["text", "digits", "npz"] = "text"
    """text: byte-level corpus; digits: scikit-learn's digits; npz: arrays x and y at data.path."""
    path: str = ""
    """Text file or directory (kind=text) or .npz file (kind=npz); empty = the embedded stdlib corpus."""
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
        if self.path and not Path(self.path).exists():
            raise ConfigError("data.path", self.path, "no such file or directory")
        if self.partition == "pathological" and self.kind == "text":
            raise ConfigError("data.partition", self.partition, "text data allows 'iid' or 'dirichlet'")


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


ALGORITHMS = ("ddp", "diloco", "fedavg", "dilocox", "streaming", "gossip")


@dataclass(kw_only=True)
class AlgorithmConfig:
    """When workers talk and how the outer update is formed."""

    name: Literal["ddp", "diloco", "fedavg", "dilocox", "streaming", "gossip"] = "diloco"
    """Training algorithm."""
    num_inner_steps: int = 50
    """H: inner steps between synchronisations (ignored by ddp)."""
    outer_lr: float = 0.7
    """Outer optimizer learning rate (DiLoCo: SGD with Nesterov momentum)."""
    outer_momentum: float = 0.9
    """Outer optimizer momentum (0 disables)."""
    nesterov: bool = True
    """Use Nesterov momentum in the outer optimizer."""
    num_warmup_rounds: int = 0
    """Rounds at the start that use num_warmup_inner_steps instead of H (DiLoCo warm-up)."""
    num_warmup_inner_steps: int = 1
    """Inner steps per warm-up round."""
    delay: int = 0
    """0: synchronous outer step; 1: the all-reduce overlaps the next round (one-step delay)."""
    overlap: Literal["delayed", "eager"] = "delayed"
    """With delay = 1: DiLoCoX's delayed update or the eager update of Kale et al. 2025."""
    num_fragments: int = 4
    """Streaming DiLoCo: number of parameter fragments P."""
    streaming_tau: int = 5
    """Streaming DiLoCo: inner steps a fragment's all-reduce may overlap."""
    streaming_alpha: float = 0.5
    """Streaming DiLoCo: mixing weight of the local fragment (theta = alpha*local + (1-alpha)*global)."""

    def validate(self) -> None:
        _check(self.num_inner_steps >= 1, "algorithm.num_inner_steps", self.num_inner_steps, "H must be >= 1")
        _check(self.outer_lr > 0, "algorithm.outer_lr", self.outer_lr, "must be > 0")
        _check(
            0 <= self.outer_momentum < 1, "algorithm.outer_momentum", self.outer_momentum, "must be in [0, 1)"
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


COMPRESSION_KINDS = ("none", "fp16", "bf16", "int8", "int4", "uint8_lookup", "topk", "lowrank")


@dataclass(kw_only=True)
class CompressionConfig:
    """How pseudo-gradients are compressed before they go on the wire."""

    kind: Literal["none", "fp16", "bf16", "int8", "int4", "uint8_lookup", "topk", "lowrank"] = "none"
    """Compressor for the outer synchronisation."""
    bits: int = 8
    """Bit width for quantization (and for low-rank factors): 4, 8 or 16."""
    rank: int = 8
    """Low-rank: rank of the factors (upper bound when adaptive)."""
    topk_fraction: float = 0.01
    """Top-k: fraction of entries kept."""
    energy_fraction: float = 0.9
    """Adaptive low-rank: share of the pseudo-gradient's energy the chosen rank keeps, in (0, 1]."""
    adaptive: bool = False
    """Choose rank and bits each round from the pseudo-gradient and the link speed (DiLoCoX)."""
    error_feedback: bool = False
    """Carry the compression error into the next round (per worker residual)."""
    block_size: int = 64
    """Block size for blockwise absmax quantization."""

    def validate(self) -> None:
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


@dataclass(kw_only=True)
class NetworkConfig:
    """The emulated wide-area link between workers."""

    bandwidth: str = "1Gbit"
    """Link rate per worker, e.g. '1Gbit', '100Mbit'."""
    latency: str = "0ms"
    """One-way latency per message, e.g. '50ms'."""
    emulation: Literal["sleep", "virtual", "off"] = "sleep"
    """sleep: collectives really take the link's time; virtual: the time is added to a simulated clock
    (for long benchmarks); off: no emulation (a real link, e.g. across hosts)."""
    worker_bandwidth: dict[str, str] = field(default_factory=dict)
    """Per-worker overrides, {"2" = "100Mbit"}; a collective runs at its slowest member's rate."""
    worker_latency: dict[str, str] = field(default_factory=dict)
    """Per-worker latency overrides, {"2" = "80ms"}."""
    intra_bandwidth: str = "100Gbit"
    """Pipeline stages: link inside a replica (activations); the cross-replica link is `bandwidth`."""

    def validate(self, num_workers: int) -> None:
        parse_bandwidth(self.bandwidth, "network.bandwidth")
        parse_duration(self.latency, "network.latency")
        parse_bandwidth(self.intra_bandwidth, "network.intra_bandwidth")
        for table, parser in (("worker_bandwidth", parse_bandwidth), ("worker_latency", parse_duration)):
            for rank, text in getattr(self, table).items():
                key = f"network.{table}.{rank}"
                _check(
                    rank.isdigit() and int(rank) < num_workers,
                    key,
                    rank,
                    f"worker rank must be in 0..{num_workers - 1}",
                )
                parser(text, key)

    @property
    def bandwidth_bps(self) -> float:
        return parse_bandwidth(self.bandwidth)

    @property
    def latency_s(self) -> float:
        return parse_duration(self.latency)


AGGREGATION_RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip")


@dataclass(kw_only=True)
class AggregationConfig:
    """How updates from workers are combined (robust rules defend against Byzantine workers)."""

    rule: Literal["mean", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip"] = "mean"
    """Aggregation rule applied in every averaging step."""
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
    tau_scale: Literal["median", "neighbors"] = "neighbors"
    """CenteredClip with adaptive_tau: the spread tau multiplies: median distance to the coordinate-wise
    median, or median distance to the (n - f)-th nearest update (attackers cannot inflate it)."""
    preaggregation: Literal["none", "nnm", "bucketing"] = "none"
    """Applied before the rule: nearest-neighbour mixing (Allouah et al. 2023) or bucketing (Karimireddy
    et al. 2022)."""
    bucket_size: int = 2
    """Bucketing: updates averaged per bucket."""
    max_norm: float = 0.0
    """Reject updates whose L2 norm exceeds this (0 disables)."""
    max_strikes: int = 3
    """A worker whose updates were rejected this many times is excluded."""
    outlier_ratio: float = 0.0
    """Strike a worker whose shard lies over this many median distances from the robust result (0 disables)."""

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
        _check(self.m >= 1, "aggregation.m", self.m, "must be >= 1")
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

    def validate(self) -> None:
        _check(self.num_stages >= 1, "parallel.num_stages", self.num_stages, "must be >= 1")
        _check(self.num_microbatches >= 1, "parallel.num_microbatches", self.num_microbatches, "must be >= 1")


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

    def validate(self) -> None:
        _check(self.min_workers >= 1, "elastic.min_workers", self.min_workers, "must be >= 1")
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
    """E: local epochs per round (0 = use algorithm.num_inner_steps steps instead)."""
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
        self._validate_across_sections()

    def _validate_across_sections(self) -> None:
        if self.model.kind == "gpt":
            _check(
                self.data.kind == "text",
                "data.kind",
                self.data.kind,
                "model.kind = 'gpt' needs data.kind = 'text'",
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
        if dataclasses.is_dataclass(tp):
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Reads TOML (optional), applies ``key=value`` overrides, builds and validates a :class:`RunConfig`."""
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
    config: RunConfig = _build(RunConfig, data, "")
    config.validate()
    return config


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
