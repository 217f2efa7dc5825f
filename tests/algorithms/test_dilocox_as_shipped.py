"""Safety net (issue 10, item 8a): DiLoCoX as shipped, built from config, puts low-rank, quantized factors
on the wire and carries the compression error into the next round.

Broken on purpose to check these fail: DiLoCoX's default compression without ``kind = "lowrank"`` (fp32
pseudo-gradients), factors sent as fp32, and error feedback switched off in DiLoCoX's defaults.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safety_helpers import records, run, tiny_config

from farsync.train.task import build_model

RUN = ["algorithm.name=dilocox", "train.num_steps=12", "algorithm.num_inner_steps=3"]
"""2 workers, 4 rounds of H = 3; the compression section left at its defaults (DiLoCoX picks its own)."""
EXPLICIT = ["compression.kind=lowrank", "compression.adaptive=true"]


def _factor_sizes(rank: int) -> tuple[int, int]:
    """(values in all P and Q factors at ``rank``, values sent dense: 1-D tensors and the weight)."""
    model = build_model(tiny_config().model)
    factors, dense = 0, 1
    for param in model.parameters():
        if param.ndim < 2:
            dense += param.numel()
            continue
        rows, cols = param.shape[0], param.numel() // param.shape[0]
        factors += (rows + cols) * min(rank, rows, cols)
    return factors, dense


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("dilocox")
    return out, run(out, *RUN)


def test_dilocox_sends_low_rank_quantized_factors(shipped: tuple[Path, dict[str, object]]) -> None:
    out, summary = shipped
    configured = tiny_config(*RUN).compression
    rounds = records(out, "round")
    synced = [r for r in rounds if "compression_rank" in r]
    # The first round's all-reduce is still in flight at its round record; every later one reports its choice.
    assert len(rounds) == 4 and len(synced) >= 3
    for record in synced:
        rank, bits = record["compression_rank"], record["compression_bits"]
        assert 1 <= rank <= configured.rank
        assert bits in (4, 8) and bits <= configured.bits  # quantized factors, never fp16 or fp32
        factors, dense = _factor_sizes(rank)
        assert factors < 0.5 * summary["num_params"]  # type: ignore[operator]  # low rank, not the matrices
        exact = factors * bits / 8 + 4 * dense  # codes alone, plus fp32 for the 1-D tensors
        assert exact <= record["compressed_bytes"] <= 1.15 * exact + 64  # + one scale per block
        assert record["compressed_bytes"] < 0.5 * (4 * factors + 4 * dense)  # far below fp32 factors


def test_the_ledger_counts_only_the_compressed_messages(shipped: tuple[Path, dict[str, object]]) -> None:
    out, summary = shipped
    synced = [r for r in records(out, "round") if "compressed_bytes" in r]
    n = int(summary["num_workers"])  # type: ignore[call-overload]
    largest = max(r["compressed_bytes"] for r in synced)
    per_round = math.ceil(2 * (n - 1) / n * largest) + 64  # the ring's share, plus the tiny rank agreement
    num_syncs = int(summary["num_rounds"])  # type: ignore[call-overload]
    assert summary["bytes_sent_per_worker"] <= num_syncs * per_round
    fp32_diloco = num_syncs * 2 * (n - 1) / n * 4 * (int(summary["num_params"]) + 1)  # type: ignore[call-overload]
    assert summary["bytes_sent_per_worker"] < fp32_diloco / 5


def test_dilocox_defaults_include_error_feedback_and_it_changes_the_result(
    shipped: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    _, summary = shipped
    with_ef = run(tmp_path / "ef", *RUN, *EXPLICIT, "compression.error_feedback=true")
    without_ef = run(tmp_path / "no_ef", *RUN, *EXPLICIT, "compression.error_feedback=false")
    hashes = {
        name: set(s["global_params_sha256"])
        for name, s in [("shipped", summary), ("ef", with_ef), ("no_ef", without_ef)]
    }  # type: ignore[arg-type]
    assert all(len(h) == 1 for h in hashes.values())  # every worker ends with the same weights
    assert hashes["shipped"] == hashes["ef"]  # the defaults are low-rank + adaptive + error feedback
    assert hashes["ef"] != hashes["no_ef"]  # the residual is added back: it changes what is sent
