"""The virtual clock with modelled compute (network.step_time_s): time moves only by modelled inner steps and
the link model, never by this machine's real time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tiny_runs import TINY_GPT

from farsync.comm.clock import Clock
from farsync.comm.cost import Collective, LinkModel, wire_time
from farsync.config import ConfigError, load_config
from farsync.launch.local import launch


def test_modelled_clock_ignores_real_time_and_charges_steps() -> None:
    clock = Clock("virtual", step_time_s=0.25)
    time.sleep(0.02)
    assert clock.now() == 0.0
    clock.add_compute(3)
    assert clock.now() == pytest.approx(0.75)
    assert clock.wait_until(1.0) == pytest.approx(0.25)
    assert clock.now() == pytest.approx(1.0)
    assert clock.wait_until(0.5) == 0.0


def test_measured_clock_add_compute_is_a_no_op() -> None:
    clock = Clock("virtual")
    before = clock.offset
    clock.add_compute(100)
    assert clock.offset == before
    assert not clock.models_compute


@pytest.mark.parametrize("mode", ["sleep", "off"])
def test_modelled_step_needs_the_virtual_clock(mode: str) -> None:
    with pytest.raises(ValueError, match="step_time_s"):
        Clock(mode, step_time_s=0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="network.step_time_s"):
        load_config(None, [f"network.emulation='{mode}'", "network.step_time_s=0.1"])


def test_ddp_run_wall_time_is_steps_plus_modelled_link(tmp_path: Path) -> None:
    """Two DDP workers, 6 steps of 0.1 s on a 1 Mbit/s link: wall = 6 x (0.1 + one gradient all-reduce)."""
    steps, step_s, bandwidth = 6, 0.1, 1e6
    config = load_config(
        None,
        [
            *TINY_GPT,
            "num_workers=2",
            "algorithm.name=ddp",
            f"train.num_steps={steps}",
            "train.eval_every=100",
            "checkpoint.every_rounds=0",
            "network.emulation='virtual'",
            f"network.bandwidth={bandwidth}",
            f"network.step_time_s={step_s}",
        ],
    )
    summary = launch(config, tmp_path / "run", mode="threads", progress=False)
    payload = 4 * summary["num_params"]
    allreduce_s = wire_time(Collective.ALL_REDUCE, payload, 2, LinkModel(bandwidth, 0.0))
    # Plus the run's few small bookkeeping collectives (a few dozen bytes: well under a millisecond here).
    assert summary["wall_s"] == pytest.approx(steps * (step_s + allreduce_s), abs=1e-3)
    assert summary["compute_s"] == pytest.approx(steps * step_s, rel=1e-6)
