"""A tiny run: 4 workers (threads), one sign-flip attacker, CenteredClip over the butterfly; it trains."""

from __future__ import annotations

from pathlib import Path

from farsync.config import load_config
from farsync.launch.local import launch


def test_centered_clip_trains_through_a_sign_flip_attacker(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "num_workers=4",
            "model.kind=mlp",
            "model.width=32",
            "data.kind=digits",
            "algorithm.name=diloco",
            "algorithm.num_inner_steps=5",
            "train.num_steps=40",
            "train.batch_size=32",
            "train.lr=0.01",
            "train.warmup_steps=5",
            "train.eval_every=1000",
            "network.emulation=off",
            "checkpoint.every_rounds=0",
            "aggregation.rule=centered_clip",
            "byzantine.workers=[3]",
            "byzantine.attack=sign_flip",
        ],
    )
    summary = launch(config, tmp_path, mode="threads", progress=False)
    # Chance is 0.1; the plain mean with this attacker ends at chance (the update is -1000x).
    assert summary["final_eval_accuracy"] > 0.5
    assert len(set(summary["global_params_sha256"])) == 1
