"""Wrap your own PyTorch loop with DiLoCoX: the lines marked `# farsync` are all it takes.

DiLoCoX (Qi et al. 2025, arXiv 2506.21263) is DiLoCo with a one-step-delay overlap (the all-reduce of a round
runs while the next round computes) and adaptive low-rank compression of the pseudo-gradient with error
feedback. ``farsync.dilocox`` is the preset; every option is a plain argument.

Alone:            python examples/wrap_dilocox.py
Across 2 workers: torchrun --standalone --nproc-per-node 2 examples/wrap_dilocox.py
"""

import torch
from torch import nn

import farsync  # farsync

torch.manual_seed(0)  # every worker starts from the same weights
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
true_weights = torch.randn(16, 1)

comm = farsync.connect(bandwidth="1Mbit")  # farsync: a slow emulated link
generator = torch.Generator().manual_seed(1 + comm.rank)  # each worker draws its own data
algorithm = farsync.dilocox(  # farsync: H = 10, a gentler outer step than the paper's for this tiny model
    model, optimizer, comm, num_inner_steps=10, outer_lr=0.5, outer_momentum=0.5, overlap="delayed", rank=4
)
with algorithm:  # farsync
    for step in range(100):
        x = torch.randn(32, 16, generator=generator)
        loss = nn.functional.mse_loss(model(x), x @ true_weights)
        loss.backward()
        optimizer.step()  # every 10th step ends a round: the previous round's average is applied
        optimizer.zero_grad()
        if step % 25 == 0 and comm.rank == 0:
            print(f"step {step:>3}  loss {loss.item():.4f}")

chosen = algorithm.metrics()  # what the adaptive reducer chose in the last round
if comm.rank == 0:
    print(
        f"final loss {loss.item():.4f}; outer rounds {algorithm.round}; "
        f"low-rank rank {chosen.get('compression_rank')} at {chosen.get('compression_bits')} bits; "
        f"bytes sent {comm.ledger.bytes_sent() / 1e3:.1f} kB; global weights {algorithm.global_sha256()[:12]}"
    )
