"""Streaming DiLoCo's parameter fragments and their synchronisation schedule (pure functions, no network).

Douillard et al. 2025, "Streaming DiLoCo with overlapping communication: Towards a Distributed Free Lunch"
(arXiv 2501.18512) split the model into P fragments made of layers taken with a stride, so that every
fragment spans the depth of the network, and synchronise one fragment at a time.

**Which parameter goes to which fragment** (:func:`split_fragments`). A parameter belongs to a *layer*:
the module path up to the first integer component of its name (``blocks.3.attn.qkv.weight`` -> layer
``blocks.3``); a parameter with no integer component belongs to its top-level module (``embed``,
``head``). Indexed layers are numbered in the order they appear (the GPT's blocks 0..L-1; an MLP's
``layers.0``, ``layers.2``, ... as 0, 1, ...) and layer k goes to fragment ``k % P``, the stride. The
other layers (the GPT's embedding and head) then go, in order, each to the fragment holding the fewest
parameters so far (lowest index on a tie), which keeps fragment sizes, and so the peak bytes of a
synchronisation, near ``1/P`` of the model. For the default GPT (4 blocks) and P = 4: block i is fragment
i, the embedding joins fragment 0 and the head fragment 1. A model without indexed layers has its
top-level modules strided instead. P larger than the number of layers is a config error.

**When fragment p synchronises** (:func:`fragments_starting`): after inner step ``s`` (counted from 1)
with ``s % H == offset_p``, ``offset_p = floor(p H / P)``. Every fragment syncs every H steps; fragment 0
at the round ends, the others staggered through the round (so fragment p's first round is only
``offset_p`` steps long). Its all-reduce overlaps the next ``tau`` inner steps and is applied after step
``s + tau``.
"""

from __future__ import annotations

from collections.abc import Iterable

from farsync.config import ConfigError

__all__ = ["fragment_offsets", "fragments_starting", "layer_of", "split_fragments"]


def layer_of(name: str) -> tuple[str, bool]:
    """``(layer, indexed)`` for a parameter name: the path through its first integer component, if any."""
    parts = name.split(".")
    for position, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: position + 1]), True
    return parts[0], False


def split_fragments(sizes: dict[str, int], num_fragments: int) -> list[list[str]]:
    """Parameter names (in ``sizes``' order) per fragment; see the module docstring for the rule."""
    if num_fragments < 1:
        raise ConfigError("algorithm.num_fragments", num_fragments, "must be >= 1")
    layers: dict[str, list[str]] = {}
    indexed: dict[str, bool] = {}
    for name in sizes:
        layer, is_indexed = layer_of(name)
        layers.setdefault(layer, []).append(name)
        indexed[layer] = is_indexed
    strided = [layer for layer in layers if indexed[layer]] or list(layers)
    rest = [layer for layer in layers if layer not in strided]
    if num_fragments > len(strided):
        raise ConfigError(
            "algorithm.num_fragments",
            num_fragments,
            f"must be <= the model's number of layers ({len(strided)})",
        )
    owner: dict[str, int] = {layer: k % num_fragments for k, layer in enumerate(strided)}
    totals = [0] * num_fragments
    for layer, fragment in owner.items():
        totals[fragment] += sum(sizes[name] for name in layers[layer])
    for layer in rest:
        fragment = min(range(num_fragments), key=lambda p: (totals[p], p))
        owner[layer] = fragment
        totals[fragment] += sum(sizes[name] for name in layers[layer])
    fragments: list[list[str]] = [[] for _ in range(num_fragments)]
    for name in sizes:
        fragments[owner[layer_of(name)[0]]].append(name)
    return fragments


def fragment_offsets(num_inner_steps: int, num_fragments: int) -> list[int]:
    """``offset_p = floor(p H / P)``: the step within each H-step round at which fragment p syncs."""
    return [(p * num_inner_steps) // num_fragments for p in range(num_fragments)]


def fragments_starting(step: int, num_inner_steps: int, offsets: Iterable[int]) -> list[int]:
    """Fragments whose synchronisation starts after inner step ``step`` (1-based)."""
    if step < 1:
        return []
    phase = step % num_inner_steps
    return [p for p, offset in enumerate(offsets) if offset == phase]
