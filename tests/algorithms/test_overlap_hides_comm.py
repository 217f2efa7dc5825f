"""Safety net (issue 10, item 8c): the one-step-delay overlap really hides communication, and DiLoCoX's time
budget really shapes what it sends.

On an emulated 100 Mbit/s link (virtual clock: the link's time is accounted, not slept) one fp32 all-reduce
of the tiny GPT takes ``L = 4 (num_params + 1) * 8 / 100e6`` seconds (about 10 ms with 2 workers), far less
than a round of H = 20 inner steps. Synchronous DiLoCo blocks the trainer for ``L`` every round; with
``algorithm.delay = 1`` the all-reduce runs during the next round and the trainer never waits for it. The
first all-reduce (gloo's connection set-up) and the final drain after the last round are left out, and
the least-blocked worker counts (a faster worker also waits for its peer, overlapped or not).

DiLoCoX sets its reducer's time budget to H x the measured inner-step time before each all-reduce, and its
planner plans for the same window; on a 10 kbit/s link no message fits it, so the planner falls to its
quality floor (4-bit low-rank factors) and reports that the sync outlasts its window.

Broken on purpose to check these fail: the overlapped all-reduce waited for inside the round that started
it; the time budget never set before the all-reduce.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safety_helpers import records, run

H = 20
OVERLAP = ["train.num_steps=80", f"algorithm.num_inner_steps={H}", "network.bandwidth='100Mbit'"]
"""4 rounds of H = 20 on a 100 Mbit/s link."""


def _blocked(out: Path, first: int, last: int) -> float:
    """The least time any worker was blocked between the ends of rounds ``first`` and ``last``.

    The least, because a worker that computes faster than its peer also waits for the peer in every
    collective, overlapped or not; the slowest worker's wait is the link's alone.
    """
    waits: dict[int, dict[int, float]] = {}
    for record in records(out, "round", worker=None):
        waits.setdefault(record["worker"], {})[record["round"]] = float(record["comm_wait_s"])
    assert len(waits) == 2 and all(sorted(w) == [1, 2, 3, 4] for w in waits.values())
    return min(w[last] - w[first] for w in waits.values())


def test_delay_one_hides_the_all_reduce_that_delay_zero_waits_for(tmp_path: Path) -> None:
    synchronous = run(tmp_path / "delay0", *OVERLAP, "algorithm.delay=0")
    run(tmp_path / "delay1", *OVERLAP, "algorithm.delay=1")
    link_s = 4 * (int(synchronous["num_params"]) + 1) * 8 / 100e6  # type: ignore[call-overload]
    # Synchronous: rounds 2-4 each wait for their own all-reduce, at least the link's time.
    assert _blocked(tmp_path / "delay0", 1, 4) >= 0.95 * 3 * link_s
    # Overlapped: rounds 3 and 4 take the previous round's average, which arrived while they computed.
    assert _blocked(tmp_path / "delay1", 2, 4) <= 0.2 * 2 * link_s


def test_dilocox_fits_its_message_to_the_time_budget_on_a_slow_link(tmp_path: Path) -> None:
    out = tmp_path / "dilocox"
    run(
        out,
        "algorithm.name=dilocox",
        "train.num_steps=12",
        "algorithm.num_inner_steps=3",
        "network.bandwidth='10Kbit'",
        # Modelled compute: every inner step is 50 ms on the clock, so the window does not depend on how
        # busy this machine is (a measured step moved by more than 2x between rounds under load).
        "network.emulation='virtual'",
        "network.step_time_s=0.05",
    )
    rounds = records(out, "round")
    assert len(rounds) == 4
    for record in rounds:  # the budget is H x the measured inner-step time, set before every all-reduce
        assert record["time_budget_s"] == pytest.approx(3 * record["inner_step_s"], rel=1e-6)
        # DiLoCoX's planner plans for H steps of the measured step time too (agreed over workers at the end
        # of the previous reduce: the slower worker's, one round old).
        assert record["inner_step_s"] == pytest.approx(0.05)
        assert record["plan_window_s"] == pytest.approx(record["time_budget_s"], rel=1e-6)
        # No message fits that window at 10 kbit/s: the planner sends its floor (4-bit low-rank factors).
        assert (record["plan_kind"], record["compression_bits"]) == ("lowrank", 4)
        assert record["plan_fits"] is False
