"""Activation fingerprints: top-k values of the last hidden state per chunk of tokens, compact and hashed.

This module owns the fingerprint an inference worker attaches to a rollout (:mod:`farsync.rl.verify`): how
the final hidden states are captured from a model without changing its numerics (a forward hook on the final
norm), how they are reduced to a fingerprint, its binary format and strict parser, and how a recomputed
hidden state is compared with a claimed fingerprint.

After TOPLOC (Ong et al., arXiv 2501.16007): the positions whose hidden states produced the completion's
tokens (the last prompt position up to the second-to-last completion position) are cut into chunks of
``chunk_tokens``; each chunk's hidden states ``[C, W]`` are flattened and the ``k`` entries largest in
magnitude are kept (flat index, value rounded to bfloat16). TOPLOC encodes the indices as a polynomial
congruence and compares exponent and mantissa bits; ours stores the indices as plain integers (2 or 4 bytes)
and compares relative errors (:func:`compare_fingerprint`), which is simpler and about as small at our ``k``.
A sha256 digest over the header, the prompt and completion ids and the body binds the fingerprint to its
tokens: a fingerprint moved to other tokens, or damaged in transit, fails before any forward pass (a liar can
recompute the digest; the forward pass is what catches it).

Format (little-endian): ``b"TKF1"``, ``precision u8`` (0 fp32, 1 bf16, 2 fp16: the worker's compute dtype),
``index_bytes u8``, ``k u16``, ``chunk_tokens u16``, ``num_positions u32``, ``width u32``, the 32-byte digest,
then per chunk ``k'`` indices and ``k'`` bfloat16 values (``k' = min(k, chunk's C * W)``).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "PRECISIONS",
    "Fingerprint",
    "FingerprintErrors",
    "FingerprintRejected",
    "build_fingerprint",
    "capture_final_hidden",
    "compare_fingerprint",
    "parse_fingerprint",
    "proof_positions",
]

_MAGIC = b"TKF1"
_HEADER = struct.Struct("<4sBBHHII")
_DIGEST_BYTES = 32
PRECISIONS: dict[str, int] = {"float32": 0, "bfloat16": 1, "float16": 2}
"""Compute dtypes a worker may declare, with their header codes."""
_MAX_K, _MAX_CHUNK, _MAX_POSITIONS, _MAX_WIDTH = 1024, 4096, 1 << 20, 1 << 20


class FingerprintRejected(ValueError):
    """A fingerprint that cannot be parsed or does not belong to its rollout; the message says why."""


@dataclass(frozen=True)
class Fingerprint:
    """A parsed fingerprint: header fields and, per chunk, the kept flat indices and values."""

    precision: str
    k: int
    chunk_tokens: int
    num_positions: int
    width: int
    indices: tuple[Tensor, ...]
    values: tuple[Tensor, ...]


@dataclass(frozen=True)
class FingerprintErrors:
    """How far a recomputed hidden state is from a fingerprint (worst chunk)."""

    max_rel_error: float
    """Largest ``|claimed - recomputed| / |recomputed|`` over all kept values."""
    mean_rel_error: float
    """Largest per-chunk mean of that relative error."""
    min_rank_ratio: float
    """Smallest ``|recomputed value at a claimed index| / (recomputed k-th largest magnitude)`` (>= 1: top-k)."""


def proof_positions(num_prompt: int, num_completion: int) -> slice:
    """Positions of ``prompt + completion`` whose hidden states produced the completion's tokens."""
    return slice(num_prompt - 1, num_prompt - 1 + num_completion)


def _final_norm(model: nn.Module, module_name: str | None) -> nn.Module:
    # farsync's GPT; a transformers model (Llama-like, GPT-2-like), bare or wrapped in farsync's HFCausalLM
    candidates = [
        "head.norm",
        "model.norm",
        "transformer.ln_f",
        "hf_model.model.norm",
        "hf_model.transformer.ln_f",
    ]
    names = [module_name] if module_name else candidates
    for name in names:
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    raise ValueError(f"model has no final norm at {names}; pass the module name of its last hidden state")


@contextmanager
def capture_final_hidden(model: nn.Module, module_name: str | None = None) -> Iterator[list[Tensor]]:
    """Within the block, the output of every forward's final norm (the last hidden state) is appended to the
    yielded list (detached). A forward hook: the model's numerics are unchanged."""
    captured: list[Tensor] = []

    def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
        captured.append(output.detach())

    handle = _final_norm(model, module_name).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _ids_bytes(ids: Sequence[int]) -> bytes:
    return np.asarray(list(ids), dtype="<u4").tobytes()


def _chunks(num_positions: int, chunk_tokens: int) -> Iterator[slice]:
    for start in range(0, num_positions, chunk_tokens):
        yield slice(start, min(start + chunk_tokens, num_positions))


def _digest(header: bytes, prompt_ids: Sequence[int], completion_ids: Sequence[int], body: bytes) -> bytes:
    return hashlib.sha256(header + _ids_bytes(prompt_ids) + _ids_bytes(completion_ids) + body).digest()


def build_fingerprint(
    hidden: Tensor,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    *,
    precision: str,
    k: int,
    chunk_tokens: int,
) -> bytes:
    """The fingerprint of ``hidden`` (``[len(completion_ids), W]``: the hidden states at
    :func:`proof_positions`) for the rollout ``prompt_ids + completion_ids`` (module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
    if not (1 <= k <= _MAX_K and 1 <= chunk_tokens <= _MAX_CHUNK):
        raise ValueError(f"k must be in [1, {_MAX_K}] and chunk_tokens in [1, {_MAX_CHUNK}]")
    num_positions, width = hidden.shape
    if num_positions != len(completion_ids):
        raise ValueError(f"{num_positions} hidden states for {len(completion_ids)} completion tokens")
    index_bytes = 2 if chunk_tokens * width <= 65536 else 4
    parts: list[bytes] = []
    for chunk in _chunks(num_positions, chunk_tokens):
        flat = hidden[chunk].float().reshape(-1)
        top = flat.abs().topk(min(k, flat.numel())).indices
        parts.append(top.numpy().astype(f"<u{index_bytes}").tobytes())
        parts.append(flat[top].to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes())
    body = b"".join(parts)
    header = _HEADER.pack(_MAGIC, PRECISIONS[precision], index_bytes, k, chunk_tokens, num_positions, width)
    return header + _digest(header, prompt_ids, completion_ids, body) + body


def parse_fingerprint(data: bytes, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> Fingerprint:
    """Parses ``data`` and checks it belongs to ``prompt_ids + completion_ids``; raises
    :class:`FingerprintRejected` on a bad size, header, digest or index."""
    if len(data) < _HEADER.size + _DIGEST_BYTES:
        raise FingerprintRejected(f"fingerprint of {len(data)} bytes is shorter than its header")
    header = data[: _HEADER.size]
    magic, code, index_bytes, k, chunk_tokens, num_positions, width = _HEADER.unpack(header)
    precision = {c: p for p, c in PRECISIONS.items()}.get(code)
    if magic != _MAGIC or precision is None or index_bytes not in (2, 4):
        raise FingerprintRejected("fingerprint header is not TKF1 with a known precision and index size")
    if not (1 <= k <= _MAX_K and 1 <= chunk_tokens <= _MAX_CHUNK and 1 <= width <= _MAX_WIDTH):
        raise FingerprintRejected(
            f"fingerprint k={k}, chunk_tokens={chunk_tokens}, width={width} out of range"
        )
    if num_positions != len(completion_ids) or num_positions > _MAX_POSITIONS:
        raise FingerprintRejected(
            f"fingerprint covers {num_positions} positions, completion has {len(completion_ids)}"
        )
    sizes = [min(k, (c.stop - c.start) * width) for c in _chunks(num_positions, chunk_tokens)]
    body = data[_HEADER.size + _DIGEST_BYTES :]
    if len(body) != sum(sizes) * (index_bytes + 2):
        raise FingerprintRejected(
            f"fingerprint body of {len(body)} bytes; its header implies {sum(sizes) * (index_bytes + 2)}"
        )
    if data[_HEADER.size : _HEADER.size + _DIGEST_BYTES] != _digest(header, prompt_ids, completion_ids, body):
        raise FingerprintRejected("fingerprint digest does not match the rollout's tokens")
    indices, values, offset = [], [], 0
    for size, chunk in zip(sizes, _chunks(num_positions, chunk_tokens), strict=True):
        index = np.frombuffer(body, dtype=f"<u{index_bytes}", count=size, offset=offset).astype(np.int64)
        offset += size * index_bytes
        bits = np.frombuffer(body, dtype="<i2", count=size, offset=offset).astype(np.int16)
        offset += size * 2
        if index.size and int(index.max()) >= (chunk.stop - chunk.start) * width:
            raise FingerprintRejected("fingerprint index outside its chunk")
        value = torch.from_numpy(bits.copy()).view(torch.bfloat16).float()
        if not bool(torch.isfinite(value).all()):
            raise FingerprintRejected("fingerprint holds a non-finite value")
        indices.append(torch.from_numpy(index))
        values.append(value)
    return Fingerprint(precision, k, chunk_tokens, num_positions, width, tuple(indices), tuple(values))


def compare_fingerprint(
    fingerprint: Fingerprint, hidden: Tensor, *, floor: float = 1e-3
) -> FingerprintErrors:
    """Compares ``fingerprint`` with recomputed hidden states ``[num_positions, W]`` (worst chunk wins).

    Relative errors divide by ``max(|recomputed|, floor)``; the kept values are the largest in magnitude, so the
    floor only matters for degenerate (all-zero) states.
    """
    if tuple(hidden.shape) != (fingerprint.num_positions, fingerprint.width):
        return FingerprintErrors(math.inf, math.inf, 0.0)
    worst_max, worst_mean, worst_rank = 0.0, 0.0, math.inf
    chunks = _chunks(fingerprint.num_positions, fingerprint.chunk_tokens)
    for chunk, index, claimed in zip(chunks, fingerprint.indices, fingerprint.values, strict=True):
        flat = hidden[chunk].float().reshape(-1)
        recomputed = flat[index]
        relative = (claimed - recomputed).abs() / recomputed.abs().clamp_min(floor)
        kth = flat.abs().topk(index.numel()).values[-1].clamp_min(floor)
        worst_max = max(worst_max, float(relative.max()))
        worst_mean = max(worst_mean, float(relative.mean()))
        worst_rank = min(worst_rank, float(recomputed.abs().min() / kth))
    return FingerprintErrors(worst_max, worst_mean, worst_rank if math.isfinite(worst_rank) else 1.0)
