"""An elastic run's ``summary.json``: the ``farsync train`` contract, written by the final quorum's source.

At the end of a run every worker that finished pushes its result onto the queue ``result/<slot>`` of the
coordinator's store (JSON of :class:`~farsync.elastic.worker.ElasticWorkerResult`, signed with a key derived
from the run's token, so a stranger can neither overwrite it, as a plain key could be, nor slip in a forged
one: entries whose signature, slot or shape is wrong are rejected and counted). The worker that is the
source of the last committed quorum collects the results of that quorum's members (waiting for each at most
``max(elastic.failure_timeout_s, elastic.collective_timeout_s)``; a member that died after the last boundary
is left out and named in a warning) and writes the run directory with
:func:`farsync.report.summary.write_run_outputs`, as ``farsync train`` does, so every field of a plain run's
summary means the same here (``num_workers`` counts the workers that finished). It adds the figures only an
elastic run has, :data:`ELASTIC_FIGURES`; the local launcher (``farsync train --elastic``) adds
:data:`LAUNCHER_FIGURES` from its coordinator and fault injector.

``metrics.jsonl`` merges the per-worker record files (``metrics.worker<slot>.jsonl``) found in the source's
output directory: all of them when the workers share one, as under the local launcher. A source started
without an output directory (``farsync worker`` without ``--out``) writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farsync.comm.auth import check_mac, open_envelope, seal
from farsync.comm.schema import MessageRejected, Rejections, decode_json, validate
from farsync.config import RunConfig
from farsync.elastic.messages import MAX_RESULT_BYTES, ElasticFigures, ResultFigures
from farsync.report.summary import write_run_outputs

if TYPE_CHECKING:
    from torch._C._distributed_c10d import Store

__all__ = [
    "ELASTIC_FIGURES",
    "LAUNCHER_FIGURES",
    "collect_results",
    "open_result",
    "result_queue",
    "publish_elastic_result",
    "read_worker_records",
    "write_elastic_summary",
]

logger = logging.getLogger(__name__)

ELASTIC_FIGURES = (
    "rounds_lost_by_survivors",
    "inner_steps_lost_by_survivors",
    "collective_retries",
    "healing_s",
    "num_finished_workers",
    "global_params_equal",
    "rejected_messages",
    "rejected_by_workers",
    "rejected_by_coordinator",
)
"""Summary fields an elastic run adds to the ``farsync train`` contract (from the workers' results)."""

LAUNCHER_FIGURES = (
    "num_quorum_changes",
    "worker_failures",
    "num_refused_joins",
    "rejected_by_kind",
    "elastic_elapsed_s",
    "num_kills",
)
"""Summary fields ``farsync train --elastic`` adds (from its coordinator and fault injector); it also replaces
``rejected_by_coordinator`` (and so ``rejected_messages``) with its coordinator's exact count."""

_POLL_S = 0.05


def result_queue(slot: int) -> str:
    """The queue worker ``slot`` pushes its signed result onto."""
    return f"result/{slot}"


def publish_elastic_result(store: Store, slot: int, result: dict[str, Any], key: bytes | None) -> None:
    """Pushes a finished worker's result (a dict with ``elastic`` figures), signed with ``key``."""
    store.queue_push(result_queue(slot), seal(key, f"slot{slot}", json.dumps(result)))


def open_result(raw: bytes, slot: int, key: bytes | None) -> dict[str, Any]:
    """The result of worker ``slot`` in ``raw`` once its signature, slot and figures check out."""
    envelope = open_envelope(raw, MAX_RESULT_BYTES)
    if envelope.sender != f"slot{slot}":
        raise MessageRejected(f"a result for {envelope.sender[:16]!r} on slot {slot}'s queue", "signature")
    check_mac(key, envelope)
    result = decode_json(envelope.body, MAX_RESULT_BYTES)
    validate(result, ResultFigures, ignore_unknown=True)
    figures = validate(result["elastic"], ElasticFigures, ignore_unknown=True)
    if figures.slot != slot:
        raise MessageRejected(f"result of slot {figures.slot} signed for slot {slot}", "signature")
    assert isinstance(result, dict)
    return result


def collect_results(
    store: Store, members: list[int], timeout_s: float, key: bytes | None, rejections: Rejections
) -> list[dict[str, Any]]:
    """The results the ``members`` published, waiting at most ``timeout_s`` for all of them; entries that
    fail their checks are counted in ``rejections`` and skipped."""
    deadline = time.monotonic() + timeout_s
    found: dict[int, dict[str, Any]] = {}
    while True:
        try:
            for slot in members:
                while slot not in found and store.queue_len(result_queue(slot)):
                    raw = bytes(store.queue_pop(result_queue(slot), block=False))
                    try:
                        found[slot] = open_result(raw, slot, key)
                    except MessageRejected as error:
                        rejections.record(result_queue(slot), error)
        except (RuntimeError, OSError, ValueError) as error:  # the coordinator went away: keep what we have
            logger.warning("elastic summary: store unreachable while collecting results (%s)", error)
            break
        if len(found) == len(members) or time.monotonic() > deadline:
            break
        time.sleep(_POLL_S)
    missing = sorted(set(members) - set(found))
    if missing:
        logger.warning("elastic summary: no result from worker(s) %s; summarising without them", missing)
    return [found[slot] for slot in sorted(found)]


def read_worker_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every record of the ``metrics.worker<slot>.jsonl`` files in ``out_dir``, slot by slot."""
    records: list[dict[str, Any]] = []
    for path in sorted(out_dir.glob("metrics.worker*.jsonl")):
        records.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return records


def write_elastic_summary(
    config: RunConfig,
    out_dir: Path,
    results: list[dict[str, Any]],
    records: list[dict[str, Any]],
    rejected_by_coordinator: int = 0,
) -> dict[str, Any]:
    """Writes ``config.toml``, ``metrics.jsonl``, ``report.png`` and ``summary.json`` (the ``farsync train``
    contract plus :data:`ELASTIC_FIGURES`); returns the summary.

    ``rejected_messages`` counts every message a check rejected: the workers' (in their results) plus
    ``rejected_by_coordinator`` (read from its signed status, or exact from the local launcher).
    """
    summary = write_run_outputs(config, out_dir, results, records)
    hashes = [r["global_params_sha256"] for r in results]
    summary.update(
        rounds_lost_by_survivors=sum(int(r["elastic"]["rounds_lost"]) for r in results),
        inner_steps_lost_by_survivors=sum(int(r["elastic"]["inner_steps_lost"]) for r in results),
        collective_retries=sum(int(r["elastic"]["collective_retries"]) for r in results),
        healing_s=sorted(float(rec["healing_s"]) for rec in records if rec.get("kind") == "heal"),
        num_finished_workers=len(results),
        global_params_equal=len(set(hashes)) == 1,
        rejected_by_workers=sum(int(r["elastic"].get("rejected_messages", 0)) for r in results),
        rejected_by_coordinator=rejected_by_coordinator,
    )
    summary["rejected_messages"] = summary["rejected_by_workers"] + rejected_by_coordinator
    temporary = out_dir / "summary.json.tmp"  # replaced in one step: a reader sees the old or the whole new
    temporary.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(temporary, out_dir / "summary.json")
    return summary
