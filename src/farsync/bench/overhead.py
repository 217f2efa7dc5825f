"""Framework overhead: an inner step under DiLoCo against the same step in a plain PyTorch loop.

Both loops run in one process on identical models and batches, interleaved block by block (one block =
one DiLoCo round of H steps, so the outer step's cost is amortised exactly as in training), at world size 1
so no communication is involved: what remains is farsync's own cost (hooks, pseudo-gradient, outer step).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from farsync.algorithms.diloco import DiLoCo
from farsync.comm.communicator import Communicator
from farsync.config import AlgorithmConfig, ModelConfig
from farsync.train.task import build_model

__all__ = ["measure_overhead"]


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_overhead(
    model_cfg: ModelConfig, *, batch_size: int, num_inner_steps: int, num_blocks: int, seed: int = 0
) -> dict[str, Any]:
    """Median seconds per inner step for plain and DiLoCo loops, and the relative overhead."""
    torch.manual_seed(seed)
    plain_model = build_model(model_cfg)
    diloco_model = build_model(model_cfg)
    diloco_model.load_state_dict(plain_model.state_dict())
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=1e-3)
    diloco_opt = torch.optim.AdamW(diloco_model.parameters(), lr=1e-3)
    algorithm = DiLoCo(
        diloco_model, diloco_opt, Communicator(None, 0, 1), AlgorithmConfig(num_inner_steps=num_inner_steps)
    )
    generator = torch.Generator().manual_seed(seed)
    batches = [
        torch.randint(0, 256, (batch_size, model_cfg.context_length + 1), generator=generator)
        for _ in range(num_inner_steps)
    ]
    plain_times: list[float] = []
    diloco_times: list[float] = []
    with algorithm:
        for block in range(num_blocks + 1):
            order = ("plain", "diloco") if block % 2 == 0 else ("diloco", "plain")  # cancel drift
            for which in order:
                model, optimizer = (
                    (plain_model, plain_opt) if which == "plain" else (diloco_model, diloco_opt)
                )
                begin = time.perf_counter()
                for batch in batches:
                    _step(model, optimizer, batch[:, :-1], batch[:, 1:])
                per_step = (time.perf_counter() - begin) / num_inner_steps
                if block > 0:  # block 0 warms up both
                    (plain_times if which == "plain" else diloco_times).append(per_step)
    plain, diloco = statistics.median(plain_times), statistics.median(diloco_times)
    return {
        "plain_step_s": plain,
        "diloco_step_s": diloco,
        "overhead": diloco / plain - 1.0,
        "num_blocks": num_blocks,
        "num_inner_steps": num_inner_steps,
        "outer_rounds_done": algorithm.round,
    }
