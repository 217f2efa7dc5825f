"""Wrap your own PyTorch loop with Streaming DiLoCo over an int8 reducer: the `# farsync` lines.

Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512) synchronises one fragment of layers at a time,
each all-reduce overlapping a few inner steps, so the peak bytes per synchronisation drop to about 1/P of
DiLoCo's. ``farsync.diloco`` with ``num_fragments`` picks it; the reducer is an independent option (here
the quantized int8 ring all-reduce).

Alone:            python examples/wrap_streaming.py
Across 2 workers: torchrun --standalone --nproc-per-node 2 examples/wrap_streaming.py
"""

import torch
from torch import nn

import farsync  # farsync

torch.manual_seed(0)  # every worker starts from the same weights
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
true_weights = torch.randn(16, 1)

comm = farsync.connect(bandwidth="100Mbit", latency="5ms")  # farsync
reducer = farsync.build_compressed_reducer(farsync.CompressionConfig(kind="int8"), comm)  # farsync
algorithm = farsync.diloco(  # farsync: 3 fragments (one per Linear), each overlapping 2 inner steps
    model, optimizer, comm, num_inner_steps=12, num_fragments=3, streaming_tau=2, reducer=reducer
)
generator = torch.Generator().manual_seed(1 + comm.rank)  # each worker draws its own data
with algorithm:  # farsync
    for step in range(96):
        x = torch.randn(32, 16, generator=generator)
        loss = nn.functional.mse_loss(model(x), x @ true_weights)
        loss.backward()
        optimizer.step()  # a fragment starts or finishes its synchronisation on some steps
        optimizer.zero_grad()
        if step % 24 == 0 and comm.rank == 0:
            print(f"step {step:>3}  loss {loss.item():.4f}")

if comm.rank == 0:
    print(
        f"final loss {loss.item():.4f}; fragment syncs {algorithm.metrics()['fragment_syncs']}; "
        f"peak bytes per sync {comm.ledger.peak_sync_bytes}; bytes sent {comm.ledger.bytes_sent() / 1e3:.1f} kB; "
        f"global weights {algorithm.global_sha256()[:12]}"
    )
