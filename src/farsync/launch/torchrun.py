"""The torchrun entry: ``torchrun --nproc-per-node N -m farsync.launch.torchrun CONFIG.toml``.

Each process is one worker; rank 0 gathers every worker's records and result (through the run's store, so
workers on other hosts need no shared file system) and writes the run's outputs and experiment logs.
``--device auto`` (the default) puts each worker on ``cuda:LOCAL_RANK`` when CUDA is available, and its
groups then use NCCL; ``docs/gpu.md`` has a two-node recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from farsync.comm.groups import open_store
from farsync.config import ConfigError, load_config
from farsync.launch.dispatch import run_worker
from farsync.launch.preflight import check_run
from farsync.report.loggers import run_loggers
from farsync.report.summary import write_run_outputs
from farsync.train import WorkerContext, read_results
from farsync.train.lifetime import become_worker_process

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``torchrun --nproc-per-node N -m farsync.launch.torchrun CONFIG.toml [--out DIR] [--set k=v ...]``."""
    parser = argparse.ArgumentParser(prog="python -m farsync.launch.torchrun")
    parser.add_argument("config", nargs="?")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="runs/torchrun")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu or cuda",
    )
    args = parser.parse_args(argv)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        config = load_config(args.config, [*args.overrides, f"num_workers={world_size}"])
        check_run(config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    become_worker_process(os.getppid())  # dies with torchrun's agent, even a SIGKILLed one
    logging.basicConfig(level=logging.WARNING, format=f"[worker {rank}] %(levelname)s %(message)s")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # torchrun's agent already hosts a TCPStore on MASTER_PORT; workers join it as clients.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = open_store(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not agent_store,
    )
    prefix = f"torchrun/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    own_records: list[str] = []
    ctx = WorkerContext(
        rank,
        world_size,
        store,
        out_dir,
        lambda record: own_records.append(json.dumps(record)),
        group_prefix=prefix,
        device=_device(args.device),
    )
    run_worker(config, ctx)
    store.set(f"{prefix}/records/{rank}", "\n".join(own_records))
    if rank == 0:
        results = read_results(store, prefix, world_size)
        keys = [f"{prefix}/records/{other}" for other in range(world_size)]
        store.wait(keys)
        records = [json.loads(line) for key in keys for line in store.get(key).decode().splitlines() if line]
        write_run_outputs(config, out_dir, results, records)
        loggers = run_loggers(config, out_dir)
        for record in records:
            loggers.log(record)
        loggers.close()
    # Keep rank 0's store alive until every worker has finished reading it.
    store.add(f"{prefix}/done", 1)
    if rank == 0:
        while int(store.add(f"{prefix}/done", 0)) < world_size:
            time.sleep(0.05)
    return 0


def _device(choice: str) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


if __name__ == "__main__":
    sys.exit(main())
