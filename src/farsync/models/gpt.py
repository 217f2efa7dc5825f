"""A small byte-level GPT, written for fast CPU steps and easy pipeline splitting.

This module owns the language model used by the text experiments: its config, its layers, its
initialisation and the function that cuts it into pipeline stages. The model has no dropout, so a
forward pass is a pure function of the parameters and the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPT", "GPTConfig", "GPTStage", "gpt_stage"]


@dataclass(kw_only=True)
class GPTConfig:
    """Shape of a :class:`GPT`."""

    num_layers: int = 4
    """Number of transformer blocks."""
    width: int = 128
    """Residual stream width (embedding dimension)."""
    num_heads: int = 4
    """Attention heads per block; must divide ``width``."""
    context_length: int = 128
    """Longest sequence the positional embedding covers."""
    vocab_size: int = 256
    """Number of token ids; 256 for raw bytes."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "width", "num_heads", "context_length", "vocab_size"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {value}")
        if self.width % self.num_heads != 0:
            raise ValueError(
                f"GPTConfig.width ({self.width}) must be divisible by num_heads ({self.num_heads})"
            )


class Embedding(nn.Module):
    """Token embedding plus learned absolute positional embedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.context_length = config.context_length
        self.token = nn.Embedding(config.vocab_size, config.width)
        self.position = nn.Embedding(config.context_length, config.width)

    def forward(self, idx: Tensor) -> Tensor:
        seq_len = idx.shape[1]
        if seq_len > self.context_length:
            raise ValueError(f"sequence length {seq_len} exceeds context_length {self.context_length}")
        positions = torch.arange(seq_len, device=idx.device)
        embedded: Tensor = self.token(idx) + self.position(positions)
        return embedded


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused query/key/value projection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq_len, width = x.shape
        head_dim = width // self.num_heads
        query, key, value = self.qkv(x).split(width, dim=2)
        query = query.view(batch, seq_len, self.num_heads, head_dim).transpose(1, 2)
        key = key.view(batch, seq_len, self.num_heads, head_dim).transpose(1, 2)
        value = value.view(batch, seq_len, self.num_heads, head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        merged = attended.transpose(1, 2).contiguous().view(batch, seq_len, width)
        projected: Tensor = self.proj(merged)
        return projected


class FeedForward(nn.Module):
    """Position-wise feed-forward layer, 4x wide with GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.width, 4 * config.width)
        self.proj = nn.Linear(4 * config.width, config.width)

    def forward(self, x: Tensor) -> Tensor:
        projected: Tensor = self.proj(F.gelu(self.fc(x)))
        return projected


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.width)
        self.mlp = FeedForward(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))
        x = x + self.mlp(self.mlp_norm(x))
        return x


class Head(nn.Module):
    """Final LayerNorm and the (untied) projection to vocabulary logits."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.width)
        self.linear = nn.Linear(config.width, config.vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.linear(self.norm(x))
        return logits


def _init_weights(module: nn.Module) -> None:
    # Linear and embedding weights ~ N(0, 0.02), biases zero; LayerNorm keeps its (1, 0) default.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class GPT(nn.Module):
    """Decoder-only transformer over byte tokens (GPT-2 layout, pre-norm, no dropout).

    The layers are exposed as ``embed`` (token + position), ``blocks`` (an ``nn.ModuleList``) and
    ``head`` (final norm + linear) so :func:`gpt_stage` can slice it into pipeline stages.
    Initialisation is deterministic given ``torch.manual_seed``.
    """

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else GPTConfig()
        self.embed = Embedding(self.config)
        self.blocks = nn.ModuleList(Block(self.config) for _ in range(self.config.num_layers))
        self.head = Head(self.config)
        self.apply(_init_weights)

    def forward(self, idx: Tensor) -> Tensor:
        """Map token ids ``[B, T]`` to next-token logits ``[B, T, vocab_size]``."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits: Tensor = self.head(x)
        return logits


class GPTStage(nn.Module):
    """A contiguous slice of a :class:`GPT`, sharing (not copying) the model's modules.

    Stage 0 also runs the embedding (input: token ids); the last stage also runs the head
    (output: logits). Other stages map hidden states to hidden states.
    """

    def __init__(self, embed: nn.Module | None, blocks: list[nn.Module], head: nn.Module | None) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        if self.embed is not None:
            x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        if self.head is not None:
            x = self.head(x)
        return x


def _stage_bounds(num_layers: int, stage: int, num_stages: int) -> tuple[int, int]:
    # The first (num_layers % num_stages) stages take one extra block, so sizes differ by at most one.
    base, extra = divmod(num_layers, num_stages)
    start = stage * base + min(stage, extra)
    stop = start + base + (1 if stage < extra else 0)
    return start, stop


def gpt_stage(model: GPT, stage: int, num_stages: int) -> GPTStage:
    """Return pipeline stage ``stage`` of ``num_stages`` for ``model``.

    Blocks are split into contiguous groups whose sizes differ by at most one. Composing all stages
    in order reproduces ``model.forward`` exactly. Raises ``ValueError`` if ``num_stages`` exceeds the
    number of blocks or ``stage`` is out of range.
    """
    num_layers = len(model.blocks)
    if num_stages < 1 or num_stages > num_layers:
        raise ValueError(f"num_stages must be in [1, num_layers={num_layers}], got {num_stages}")
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages}), got {stage}")
    start, stop = _stage_bounds(num_layers, stage, num_stages)
    return GPTStage(
        embed=model.embed if stage == 0 else None,
        blocks=[model.blocks[i] for i in range(start, stop)],
        head=model.head if stage == num_stages - 1 else None,
    )
