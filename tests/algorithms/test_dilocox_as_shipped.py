"""Safety net (issue 10, item 8a): DiLoCoX as shipped, built from config, on a slow link puts low-rank,
quantized factors on the wire (at its quality floor: 4-bit factors, ranks at most 1/8 of each matrix) and
carries the compression error into the next round. (On a fast link it is synchronous DiLoCo:
tests/algorithms/test_dilocox_planner.py.)

Broken on purpose to check these fail: DiLoCoX's default compression without the planner (fp32
pseudo-gradients), factors sent as fp32, and error feedback switched off in DiLoCoX's defaults.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safety_helpers import records, run, tiny_config

from farsync.train.task import build_model

RUN = [
    "algorithm.name=dilocox",
    "train.num_steps=12",
    "algorithm.num_inner_steps=3",
    "network.bandwidth='10Kbit'",
]
"""2 workers, 4 rounds of H = 3 on a 10 kbit/s link; the compression section left at its defaults."""
EXPLICIT = ["compression.kind=lowrank", "compression.adaptive=true"]
"""What DiLoCoX's defaults amount to (the planner), spelled out."""


def _factor_sizes(fraction: float | None) -> tuple[int, int]:
    """(values in all P and Q factors with each matrix at ``ceil(fraction x min(rows, cols))``, or rank 1
    when ``fraction`` is None; values sent dense: 1-D tensors and the weight)."""
    model = build_model(tiny_config().model)
    factors, dense = 0, 1
    for param in model.parameters():
        if param.ndim < 2:
            dense += param.numel()
            continue
        rows, cols = param.shape[0], param.numel() // param.shape[0]
        rank = 1 if fraction is None else math.ceil(fraction * min(rows, cols))
        factors += (rows + cols) * rank
    return factors, dense


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("dilocox")
    return out, run(out, *RUN)


def test_dilocox_sends_low_rank_quantized_factors(shipped: tuple[Path, dict[str, object]]) -> None:
    out, summary = shipped
    rounds = records(out, "round")
    assert len(rounds) == 4
    for record in rounds:
        assert (record["plan_mode"], record["plan_kind"]) == ("overlap", "lowrank")
        assert record["compression_bits"] == 4  # quantized factors at the floor, never fp16 or fp32
        assert record["plan_rank_fraction_max"] <= 0.125
        most, dense = _factor_sizes(0.125)
        least, _ = _factor_sizes(None)
        assert most < 0.5 * summary["num_params"]  # type: ignore[operator]  # low rank, not the matrices
        # Codes at 4 bits plus one fp32 scale per 64 values (P and Q each round up a block), and fp32 for
        # the 1-D tensors and the weight.
        upper = most / 2 + 4 * (math.ceil(most / 64) + 2) + 4 * dense
        assert least / 2 + 4 * dense <= record["plan_message_bytes"] <= upper
        assert record["plan_message_bytes"] < 0.5 * (4 * most + 4 * dense)  # far below fp32 factors


def test_the_ledger_counts_only_the_compressed_messages(shipped: tuple[Path, dict[str, object]]) -> None:
    out, summary = shipped
    rounds = records(out, "round")
    n = int(summary["num_workers"])  # type: ignore[call-overload]
    largest = max(r["plan_message_bytes"] for r in rounds)
    # The ring's share, plus the agreements (3 and one-per-tensor fp64 values, all-gathered).
    per_round = math.ceil(2 * (n - 1) / n * largest) + 8 * (3 + 16) * (n - 1)
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
