"""Wrap your own PyTorch loop with DiLoCo over Byzantine-robust aggregation: the `# farsync` lines.

The reducer validates every worker's pseudo-gradient (a norm above ``max_norm`` is a strike; after
``max_strikes`` the worker is excluded) and combines the accepted ones with CenteredClip, shard by shard
over BTARD's butterfly exchange (Gorbunov et al. 2021, arXiv 2106.11257). Under torchrun the last worker
plays a faulty one (its learning rate is 1000 times too large), and the others train on without it.

Alone:            python examples/wrap_robust.py
Across 2 workers: torchrun --standalone --nproc-per-node 2 examples/wrap_robust.py
"""

import torch
from torch import nn

import farsync  # farsync

comm = farsync.connect(bandwidth="100Mbit", latency="5ms")  # farsync
faulty = comm.world_size > 1 and comm.rank == comm.world_size - 1

torch.manual_seed(0)  # every worker starts from the same weights
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=10.0 if faulty else 1e-2)
true_weights = torch.randn(16, 1)

rule = farsync.AggregationConfig(rule="centered_clip", max_norm=50.0, max_strikes=2)  # farsync
reducer = farsync.RobustReducer(comm, rule)  # farsync (farsync.make_reducer composes it with compression, DP)
generator = torch.Generator().manual_seed(1 + comm.rank)  # each worker draws its own data
with farsync.diloco(model, optimizer, comm, num_inner_steps=10, reducer=reducer) as algorithm:  # farsync
    for step in range(100):
        x = torch.randn(32, 16, generator=generator)
        loss = nn.functional.mse_loss(model(x), x @ true_weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 25 == 0 and comm.rank == 0:
            print(f"step {step:>3}  loss {loss.item():.4f}")

with algorithm.evaluating() as global_model:  # the weights every worker agrees on
    x = torch.randn(256, 16, generator=generator)
    global_loss = nn.functional.mse_loss(global_model(x), x @ true_weights).item()
if comm.rank == 0:
    print(
        f"global model loss {global_loss:.4f}; outer rounds {algorithm.round}; "
        f"excluded workers {reducer.strikes.excluded}; "
        f"global weights {algorithm.global_sha256()[:12]}"
    )
