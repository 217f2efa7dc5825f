"""Timing the quantized ring all-reduce against gloo's fp32 all-reduce on the same emulated link.

The figure of merit is **fp32-equivalent bytes per second**: ``4 * numel / seconds``, the rate at which an
all-reduce delivers the average of a float32 vector of ``numel`` values, whatever it puts on the wire.

Times come from the communicator's clock. With ``Clock("virtual")`` (what :func:`compare_allreduce` uses)
every collective costs ``max(real time, emulated link time)`` without sleeping, so the result is what the
emulated link would give, and a 100 Mbit/s comparison of a 4 MB vector finishes in about a second. The real
work between messages (encoding, decoding, adding) is real time on the clock and is counted: it is hidden
only where the ring overlaps it with a message still on the wire. ``Clock("sleep")`` gives the same numbers
in wall-clock time, only slower.

Because real time counts, a host that runs several ranks on few, busy cores makes the ring look slower than
the link would: a rank starved of CPU posts its next message late. So every result also carries two
figures that separate the link from the host: ``link_seconds``, the time the emulated link alone needs for
the bytes this rank sent (``bytes_sent / rate + 2 (n-1) * latency``), and ``cpu_seconds``, the CPU time of
the calling thread (encoding, decoding, adding; gloo's own threads are not included). With the pipelined
ring a rank that has a core to itself takes about ``max(link_seconds, cpu_seconds)``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Literal

import torch

from farsync.collectives.quantized_ring import quantized_ring_all_reduce
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.cost import LinkModel

__all__ = ["compare_allreduce", "time_allreduce"]

logger = logging.getLogger(__name__)

TimedKind = Literal["fp32", "int8", "int4", "fp16", "bf16", "uint8_lookup", "ring_fp32"]


def time_allreduce(
    comm: Communicator,
    numel: int,
    kind: TimedKind = "int8",
    repeats: int = 3,
    *,
    block_size: int = 64,
    num_pieces: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    """Mean time of one all-reduce of ``numel`` N(0, 1) float32 values on ``comm`` (call on every rank).

    ``kind="fp32"`` is gloo's own all-reduce of the float32 vector (``comm.all_reduce``); ``"ring_fp32"`` is
    the ring of this package carrying float32; the other kinds are the ring with that wire codec.

    Returns, per all-reduce: ``seconds`` (mean on ``comm.clock``), ``fp32_equivalent_bytes_per_s``
    (``4 numel / seconds``), ``bytes_sent`` (this rank's wire bytes, from the ledger), ``link_seconds`` and
    ``cpu_seconds`` (module docstring).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    generator = torch.Generator().manual_seed(seed + comm.rank)
    vector = torch.randn(numel, generator=generator)

    def once() -> None:
        if kind == "fp32":
            comm.all_reduce(vector.clone(), op="avg").wait()
        else:
            codec_kind = "fp32" if kind == "ring_fp32" else kind
            quantized_ring_all_reduce(comm, vector, codec_kind, block_size, num_pieces=num_pieces)

    once()  # warm-up (first-call allocations and dispatch), not timed
    comm.barrier()
    bytes_before = comm.ledger.bytes_sent(comm.channel)
    start, cpu_start = comm.clock.now(), time.thread_time()
    for _ in range(repeats):
        once()
    seconds = (comm.clock.now() - start) / repeats
    cpu_seconds = (time.thread_time() - cpu_start) / repeats
    bytes_sent = (comm.ledger.bytes_sent(comm.channel) - bytes_before) / repeats
    link = comm.link
    link_seconds = 0.0
    if link is not None and comm.world_size > 1:
        link_seconds = bytes_sent / link.bytes_per_s + 2 * (comm.world_size - 1) * link.latency_s
    return {
        "seconds": seconds,
        "fp32_equivalent_bytes_per_s": 4 * numel / seconds if seconds > 0 else float("inf"),
        "bytes_sent": bytes_sent,
        "link_seconds": link_seconds,
        "cpu_seconds": cpu_seconds,
    }


def compare_allreduce(
    *,
    world_size: int = 4,
    numel: int = 1 << 20,
    bandwidth_bps: float = 100e6,
    latency_s: float = 0.0,
    kinds: tuple[TimedKind, ...] = ("fp32", "int8", "int4"),
    repeats: int = 3,
    block_size: int = 64,
    num_pieces: int = 4,
    clock_mode: Literal["virtual", "sleep"] = "virtual",
) -> dict[str, Any]:
    """Times every kind in ``kinds`` on ``world_size`` threaded gloo ranks sharing one emulated link.

    Returns ``{"setup": {...}, "kinds": {kind: time_allreduce result of the slowest rank}, "speedup":
    {kind: fp32 seconds / kind seconds}, "link_speedup": {kind: fp32 link_seconds / kind link_seconds}}``;
    the speedups need ``"fp32"`` in ``kinds``. ``setup`` records the host's CPU count and load average, which
    bound how fast in-process ranks can go (module docstring).
    """
    from farsync.sim.ranks import run_ranks  # the thread launcher; imported here to keep comm/ light

    link = LinkModel(bandwidth_bps=bandwidth_bps, latency_s=latency_s)

    def on_rank(rank: int, world: int, group: Any, store: Any) -> dict[str, dict[str, float]]:
        torch.set_num_threads(1)
        results: dict[str, dict[str, float]] = {}
        for kind in kinds:
            comm = Communicator(group, rank, world, clock=Clock(clock_mode), link=link)
            results[kind] = time_allreduce(
                comm, numel, kind, repeats, block_size=block_size, num_pieces=num_pieces
            )
        return results

    per_rank = run_ranks(on_rank, world_size, prefix="allreduce-timing")
    slowest = {kind: max((r[kind] for r in per_rank), key=lambda x: x["seconds"]) for kind in kinds}
    speedup: dict[str, float] = {}
    link_speedup: dict[str, float] = {}
    if "fp32" in slowest:
        fp32 = slowest["fp32"]
        speedup = {kind: fp32["seconds"] / result["seconds"] for kind, result in slowest.items()}
        if fp32["link_seconds"] > 0:
            link_speedup = {kind: fp32["link_seconds"] / r["link_seconds"] for kind, r in slowest.items()}
    setup = {
        "world_size": world_size,
        "numel": numel,
        "bandwidth_bps": bandwidth_bps,
        "latency_s": latency_s,
        "repeats": repeats,
        "block_size": block_size,
        "num_pieces": num_pieces,
        "clock": clock_mode,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    logger.info("all-reduce timing %s: speedup over fp32 %s", setup, speedup)
    return {"setup": setup, "kinds": slowest, "speedup": speedup, "link_speedup": link_speedup}
