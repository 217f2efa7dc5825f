"""GPU check: a short NCCL run of a tiny Hugging Face Llama under torchrun, on whatever GPUs this box has.

    python benchmarks/gpu_check.py [--out DIR]

* 1 GPU: one rank on ``cuda:0`` (DiLoCo at world size 1, bf16 autocast, an NCCL default group only where
  sharding needs one): checks the CUDA path of the loop, the task and the export. NCCL refuses two ranks on
  one GPU, so nothing multi-rank can run on a one-GPU box.
* 2 or 3 GPUs: two DiLoCo replicas, one rank each, synchronising over NCCL.
* 4 or more GPUs: also 2 replicas x 2 FSDP2 shards (``parallel.num_shards = 2``), NCCL inside and between.

Each run must finish with a finite loss, every worker holding the same global weights, and an export that
``transformers`` loads. Prints one line per run and ``GPU CHECK PASSED`` (exit 0) or the first failure (exit 1).
CI has no GPU; the project's tests pass without this. Runs in about a minute on one modern GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

TINY = [
    "model.kind=hf",
    "model.num_layers=2",
    "model.width=64",
    "model.num_heads=4",
    "model.context_length=64",
    "data.tokenizer=bpe",
    "data.vocab_size=1024",
    "data.max_bytes=1000000",
    "train.batch_size=8",
    "train.num_steps=40",
    "train.warmup_steps=4",
    "train.eval_every=20",
    "train.precision=bf16",
    "algorithm.name=diloco",
    "algorithm.num_inner_steps=10",
    "network.emulation=off",
]


def _run(name: str, nproc: int, extra: list[str], out: Path) -> str | None:
    """Runs one torchrun job; returns None when it passed, else what failed."""
    run_dir = out / name
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "farsync.launch.torchrun",
        "--out",
        str(run_dir),
        "--device",
        "cuda",
    ]
    for override in [*TINY, *extra]:
        command += ["--set", override]
    begin = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "FARSYNC_LOOPBACK": "1"}
    )
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        return f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}"
    summary = json.loads((run_dir / "summary.json").read_text())
    loss = summary["final_eval_loss"]
    hashes = set(summary["global_params_sha256"])
    if not math.isfinite(loss) or len(hashes) != 1:
        return f"{name}: final eval loss {loss}, {len(hashes)} different global weights"
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "farsync.cli",
            "export",
            str(run_dir),
            "--out",
            str(out / f"{name}_hf"),
            "--overwrite",
        ],
        capture_output=True,
        text=True,
    )
    if export.returncode != 0:
        return f"{name}: export failed\n{export.stderr[-2000:]}"
    import transformers

    transformers.AutoModelForCausalLM.from_pretrained(str(out / f"{name}_hf"), local_files_only=True)
    print(
        f"{name}: {nproc} rank(s), eval loss {loss:.4f}, {summary['bytes_sent_per_worker'] / 1e6:.2f} MB sent "
        f"per worker, wall {wall:.0f}s (process start included), export loads",
        flush=True,
    )
    return None


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu_check")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the CPU tests cover the rest)")
        return 1
    gpus = torch.cuda.device_count()
    print(f"{gpus} GPU(s): {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    out = Path(args.out)
    jobs: list[tuple[str, int, list[str]]] = [("one_rank", 1, [])]
    if gpus >= 2:
        jobs.append(("two_replicas_nccl", 2, []))
    if gpus >= 4:
        jobs.append(("two_by_two_fsdp", 4, ["parallel.num_shards=2"]))
    for name, nproc, extra in jobs:
        failure = _run(name, nproc, extra, out)
        if failure is not None:
            print(f"GPU CHECK FAILED: {failure}")
            return 1
    print("GPU CHECK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
