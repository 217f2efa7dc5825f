"""The smallest GPT run the tests train: one block, 32 wide, on 200 kB of the embedded corpus (a step takes
milliseconds). Test modules add what they vary (workers, emulation, steps) to :data:`TINY_GPT`."""

from __future__ import annotations

TINY_GPT = [
    "model.num_layers=1",
    "model.width=32",
    "model.num_heads=2",
    "model.context_length=16",
    "train.batch_size=2",
    "train.num_eval_batches=2",
    "train.warmup_steps=2",
    "data.max_bytes=200000",
]
