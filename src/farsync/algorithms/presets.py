"""The DiLoCo family from Python in one call: :func:`diloco` with options, :func:`dilocox` as a preset.

torchft's ``DiLoCo`` is one class whose options switch on fragments, overlap and quantization. farsync keeps
one class per variant, each in its own module with its paper and its round logic (:class:`DiLoCo`
synchronous; :class:`OverlappedDiLoCo` with a one-round overlap rule; :class:`StreamingDiLoCo`
with fragments; :class:`DiLoCoX`), because the variants keep different state between rounds and one class
holding all of it would mix four checkpoint formats. What a user needs is the torchft shape of the *call*,
so this module gives the family one entry point: :func:`diloco` takes every option as a plain argument,
rejects combinations that mean nothing (fragments with a one-step-delay overlap) and returns the class that
implements the combination. :func:`dilocox` is the documented DiLoCoX preset (Qi et al. 2025, arXiv
2506.21263): delayed overlap plus adaptive low-rank compression with error feedback.

The reducer is an independent option of every variant: pass any :class:`~farsync.reducers.base.Reducer`
(fp32 mean by default; compressed, robust or private from :func:`farsync.make_reducer` or the
``build_*_reducer`` functions). The returned object is a context manager that hooks the user's optimizer::

    with farsync.diloco(model, optimizer, comm, num_inner_steps=50, overlap="eager") as algo:
        ...  # the user's loop, unchanged

The CLI does not go through here: :mod:`farsync.train.build` maps a run config to the same classes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from farsync.algorithms.diloco import DiLoCo
from farsync.algorithms.dilocox import DiLoCoX
from farsync.algorithms.overlap import OverlappedDiLoCo
from farsync.algorithms.streaming import StreamingDiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import OVERLAP_RULES, AlgorithmConfig, CompressionConfig, ConfigError
from farsync.reducers.base import Reducer

__all__ = ["diloco", "dilocox"]

Overlap = Literal["none", "naive", "eager", "delayed"]
_OVERLAPS = ("none", *OVERLAP_RULES)
# Every option defaults to its config field's default, so Python and the CLI start from the same run.
_ALGORITHM = AlgorithmConfig()
_COMPRESSION = CompressionConfig()


def diloco(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    *,
    num_inner_steps: int = _ALGORITHM.num_inner_steps,
    outer_lr: float = _ALGORITHM.outer_lr,
    outer_momentum: float = _ALGORITHM.outer_momentum,
    nesterov: bool = _ALGORITHM.nesterov,
    num_warmup_rounds: int = _ALGORITHM.num_warmup_rounds,
    num_warmup_inner_steps: int = _ALGORITHM.num_warmup_inner_steps,
    overlap: Overlap = "none",
    num_fragments: int = 0,
    streaming_tau: int = _ALGORITHM.streaming_tau,
    streaming_alpha: float = _ALGORITHM.streaming_alpha,
    reducer: Reducer | None = None,
) -> DiLoCo:
    """DiLoCo (Douillard et al. 2023, arXiv 2311.08105) with the chosen options, not yet attached.

    Every option defaults to the default of its :class:`~farsync.config.AlgorithmConfig` field.

    Args:
        num_inner_steps: H, inner steps between outer synchronisations.
        outer_lr, outer_momentum, nesterov: the outer SGD optimizer over the global weights.
        num_warmup_rounds, num_warmup_inner_steps: the first rounds use the shorter H (synchronous only).
        overlap: ``"none"``: synchronous outer step; otherwise the all-reduce of a round overlaps the next
            round (:class:`OverlappedDiLoCo`) with this rule: ``"naive"`` or ``"eager"`` (Kale et al. 2025,
            Algorithms 2 and 3), ``"delayed"`` (farsync's; :mod:`farsync.algorithms.overlap`).
        num_fragments: 0 synchronises the whole model at the end of a round; P >= 1 is Streaming DiLoCo
            (:class:`StreamingDiLoCo`) with P strided fragments, each overlapping ``streaming_tau`` inner
            steps and mixed back with weight ``streaming_alpha`` on the local fragment.
        reducer: how updates are averaged (default fp32 mean over ``comm``).

    Raises:
        ConfigError: an option out of range, or a combination that means nothing, named with what is allowed.
    """
    if overlap not in _OVERLAPS:
        raise ConfigError("overlap", overlap, "allowed: " + ", ".join(repr(o) for o in _OVERLAPS))
    if num_fragments < 0:
        raise ConfigError("num_fragments", num_fragments, "must be >= 0 (0: no fragments, P >= 1: streaming)")
    if num_fragments and overlap != "none":
        raise ConfigError(
            "overlap",
            overlap,
            "Streaming DiLoCo (num_fragments >= 1) overlaps each fragment for streaming_tau steps; use 'none'",
        )
    if num_fragments and num_warmup_rounds:
        raise ConfigError("num_warmup_rounds", num_warmup_rounds, "Streaming DiLoCo has no warm-up; use 0")
    config = AlgorithmConfig(
        name="streaming" if num_fragments else "diloco",
        num_inner_steps=num_inner_steps,
        outer_lr=outer_lr,
        outer_momentum=outer_momentum,
        nesterov=nesterov,
        num_warmup_rounds=num_warmup_rounds,
        num_warmup_inner_steps=num_warmup_inner_steps,
        delay=0 if overlap == "none" else 1,
        overlap="delayed" if overlap == "none" else overlap,
        num_fragments=max(num_fragments, 1),
        streaming_tau=streaming_tau,
        streaming_alpha=streaming_alpha,
    )
    config.validate()
    if num_fragments:
        return StreamingDiLoCo(model, optimizer, comm, config, reducer=reducer)
    if overlap != "none":
        return OverlappedDiLoCo(model, optimizer, comm, config, reducer=reducer)
    return DiLoCo(model, optimizer, comm, config, reducer=reducer)


def dilocox(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    comm: Communicator,
    *,
    num_inner_steps: int = _ALGORITHM.num_inner_steps,
    outer_lr: float = _ALGORITHM.outer_lr,
    outer_momentum: float = _ALGORITHM.outer_momentum,
    nesterov: bool = _ALGORITHM.nesterov,
    overlap: Literal["naive", "eager", "delayed"] = "delayed",
    rank: int = _COMPRESSION.rank,
    bits: int = _COMPRESSION.bits,
    energy_fraction: float = _COMPRESSION.energy_fraction,
    block_size: int = _COMPRESSION.block_size,
    adaptive: bool = True,
    error_feedback: bool = True,
    sync_fraction: float = _COMPRESSION.sync_fraction,
    min_bits: int = _COMPRESSION.min_bits,
    min_rank_fraction: float = _COMPRESSION.min_rank_fraction,
    min_compression_ratio: float = _COMPRESSION.min_compression_ratio,
    adapt_inner_steps: bool = False,
    num_inner_steps_max: int = _COMPRESSION.num_inner_steps_max,
    reducer: Reducer | None = None,
) -> DiLoCoX:
    """The DiLoCoX preset (Qi et al. 2025, arXiv 2506.21263), not yet attached.

    Qi et al.'s: the one-step-delay overlap (``overlap``: any rule of :mod:`farsync.algorithms.overlap`;
    ``"delayed"``, farsync's rule after the paper's description, by default), low-rank plus quantized
    pseudo-gradients with error feedback, and adapting the compression and H so a round's communication
    hides behind the next round's compute. farsync's (with ``adaptive``, the default): every round is
    planned from the link (:mod:`farsync.compress.adaptive`): synchronous and uncompressed where the
    all-reduce is a small share of the round (``sync_fraction``; also with dense quantized values that
    cheap), otherwise overlapped with the least compression that fits the next round's compute (fp32, dense
    16/8/4/2 bits, low-rank at rank fractions of each matrix), never below the floor (``min_bits``,
    ``min_rank_fraction``); at the floor ``adapt_inner_steps`` grows H up to ``num_inner_steps_max``;
    ``min_compression_ratio`` forces at least that much compression. Without ``adaptive`` the factors have
    rank ``rank`` at ``bits`` bits every round (always overlapped); ``rank`` and ``bits`` are unused with
    it. ``error_feedback`` carries what compression lost into the next round. A ``reducer`` other than the
    plain fp32 mean (robust, private, ...) is used as given instead (every round then overlaps).

    Raises:
        ConfigError: an option out of range, named with what is allowed.
    """
    if overlap not in OVERLAP_RULES:
        raise ConfigError(
            "overlap",
            overlap,
            "DiLoCoX always overlaps; allowed: " + ", ".join(repr(o) for o in OVERLAP_RULES),
        )
    config = AlgorithmConfig(
        name="dilocox",
        num_inner_steps=num_inner_steps,
        outer_lr=outer_lr,
        outer_momentum=outer_momentum,
        nesterov=nesterov,
        delay=1,
        overlap=overlap,
    )
    config.validate()
    compression = CompressionConfig(
        kind="lowrank",
        adaptive=adaptive,
        error_feedback=error_feedback,
        rank=rank,
        bits=bits,
        energy_fraction=energy_fraction,
        block_size=block_size,
        sync_fraction=sync_fraction,
        min_bits=min_bits,
        min_rank_fraction=min_rank_fraction,
        min_compression_ratio=min_compression_ratio,
        adapt_inner_steps=adapt_inner_steps,
        num_inner_steps_max=num_inner_steps_max,
    )
    compression.validate()
    return DiLoCoX(model, optimizer, comm, config, reducer=reducer, compression=compression)
