"""Wrap your own PyTorch training loop with DiLoCo: the lines marked `# farsync` are all it takes.

Alone:            python examples/wrap_your_loop.py
Across 2 workers: torchrun --standalone --nproc-per-node 2 examples/wrap_your_loop.py
(across hosts, run torchrun on each with --nnodes, --node-rank and --rdzv-endpoint as usual)
"""

import torch
from torch import nn

import farsync  # farsync

torch.manual_seed(0)  # every worker starts from the same weights
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
true_weights = torch.randn(16, 1)

comm = farsync.connect(bandwidth="100Mbit", latency="20ms")  # farsync
generator = torch.Generator().manual_seed(1 + comm.rank)  # each worker draws its own data
with farsync.DiLoCo(model, optimizer, comm, farsync.AlgorithmConfig(num_inner_steps=20)) as diloco:  # farsync
    for step in range(200):
        x = torch.randn(32, 16, generator=generator)
        loss = nn.functional.mse_loss(model(x), x @ true_weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 and comm.rank == 0:
            print(f"step {step:>3}  loss {loss.item():.4f}")

if comm.rank == 0:
    print(
        f"final loss {loss.item():.4f}; outer rounds {diloco.round}; "
        f"bytes sent {comm.ledger.bytes_sent() / 1e3:.1f} kB; global weights {diloco.global_sha256()[:12]}"
    )
