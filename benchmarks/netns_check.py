#!/usr/bin/env python
"""Check the WAN emulator against the kernel: the same run over links shaped by ``tc`` in network namespaces.

Needs root (``ip netns``, veth, a bridge, ``tc tbf``); not part of CI. See benchmarks/NETNS.md.

Topology (a star): one namespace ``fsnc-hub`` holds a bridge; each worker i gets its own namespace
``fsnc-w{i}`` joined to the bridge by a veth pair, with address 10.213.0.{i+1}/24 on its side (``fs0``).
Both directions of every worker's link are shaped with a token bucket (``tc qdisc ... tbf rate R``): the
worker's egress on ``fs0`` (its upload) and the hub side's egress towards it (its download). That is the
cost model's link (comm/cost.py): every worker has its own full-duplex link of rate R. There is no netem
on these machines, so the configs use ``network.latency = "0ms"``.

For each config the script runs

1. the **prediction**: the config with ``network.emulation = "virtual"`` through the local launcher
   (processes, loopback); its ``wall_s`` is the emulator's prediction of the run's time on the link;
2. the **kernel-shaped run**: one ``torchrun`` per namespace (``--nnodes N --node-rank i``, static
   rendezvous at worker 0's address) running ``python -m farsync.launch.torchrun CONFIG.toml --set
   network.emulation="off"``, gloo bound to ``fs0``; its ``wall_s`` is measured real time;

and reports the relative error (target: within 15%). It also times the int8 quantized ring all-reduce and
gloo's fp32 all-reduce over the shaped links (real clock) next to the emulator's figures for the same
link (virtual clock), as fp32-equivalent throughput.

Usage (as root, from the repository root, with the venv active)::

    python benchmarks/netns_check.py [--bandwidth 20Mbit] [--out benchmarks/results/netns_check.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HUB = "fsnc-hub"
BRIDGE = "fsbr0"
SUBNET = "10.213.0"
PORT = 29531

CONFIGS: dict[str, list[str]] = {
    "ddp_tiny": [
        "algorithm.name=ddp",
        "train.num_steps=30",
    ],
    "diloco_tiny": [
        "algorithm.name=diloco",
        "algorithm.num_inner_steps=5",
        "train.num_steps=30",
    ],
}
# Small batches and contexts keep compute a small share of the run, so the comparison is about the link and
# not about how fast a shared machine happened to compute during each of the two runs.
COMMON = [
    "num_workers=4",
    "seed=0",
    "model.num_layers=2",
    "model.width=64",
    "model.num_heads=2",
    "model.context_length=32",
    "data.max_bytes=300000",
    "train.batch_size=2",
    "train.eval_every=1000",
    "train.num_eval_batches=2",
    "checkpoint.every_rounds=0",
    "network.latency='0ms'",
]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def worker_ns(i: int) -> str:
    return f"fsnc-w{i}"


# ------------------------------------------------------------------------------------------- topology
def teardown(n: int) -> None:
    for name in [HUB, *(worker_ns(i) for i in range(n))]:
        sh("ip", "netns", "del", name, check=False)


def tc_rate(bandwidth: str) -> str:
    """'20Mbit' -> '20mbit' (tc's spelling)."""
    return bandwidth.strip().lower().replace("/s", "")


def setup(n: int, bandwidth: str) -> None:
    teardown(n)
    rate = tc_rate(bandwidth)
    sh("ip", "netns", "add", HUB)
    sh("ip", "-n", HUB, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", HUB, "link", "set", BRIDGE, "up")
    for i in range(n):
        ns, outer, inner = worker_ns(i), f"fsh{i}", f"fsv{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "netns", HUB)
        sh("ip", "-n", ns, "link", "set", inner, "name", "fs0")
        sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "fs0")
        sh("ip", "-n", ns, "link", "set", "fs0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", HUB, "link", "set", outer, "master", BRIDGE)
        sh("ip", "-n", HUB, "link", "set", outer, "up")
        # Token buckets on both directions: burst ~ a few packets so short bursts cannot outrun the rate.
        for namespace, device in ((ns, "fs0"), (HUB, outer)):
            sh(
                "ip",
                "netns",
                "exec",
                namespace,
                "tc",
                "qdisc",
                "add",
                "dev",
                device,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "16kb",
                "latency",
                "2s",
            )


# ------------------------------------------------------------------------------------------ the runs
def predicted(name: str, overrides: list[str], out: Path) -> dict[str, Any]:
    from farsync.config import load_config
    from farsync.launch.local import launch

    config = load_config(None, [*overrides, "network.emulation='virtual'"])
    return launch(config, out / f"{name}_predicted", progress=False, mode="processes")


def kernel_shaped(name: str, overrides: list[str], out: Path, n: int) -> dict[str, Any]:
    from farsync.config import config_to_toml, load_config

    config = load_config(None, [*overrides, "network.emulation='off'"])
    run_dir = out / f"{name}_kernel"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config_path = run_dir / "input.toml"
    config_path.write_text(config_to_toml(config))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    processes = []
    for i in range(n):
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "fs0", "FARSYNC_LOOPBACK": "0", "OMP_NUM_THREADS": "1"}
        command = [
            "ip", "netns", "exec", worker_ns(i), torchrun,
            f"--nnodes={n}", f"--node-rank={i}", "--nproc-per-node=1",
            f"--master-addr={SUBNET}.1", f"--master-port={PORT}",
            "-m", "farsync.launch.torchrun", str(config_path),
            "--set", 'network.emulation="off"', "--out", str(run_dir),
        ]  # fmt: skip
        log = open(run_dir / f"torchrun{i}.log", "w")  # noqa: SIM115 - closed after the wait
        processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for process, log in processes:
        codes.append(process.wait(timeout=1800))
        log.close()
    if any(codes):
        raise RuntimeError(f"{name}: torchrun exit codes {codes}; see {run_dir}/torchrun*.log")
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary


# ---------------------------------------------------------------------------------- all-reduce timing
def timing_worker(rank: int, world: int, numel: int, repeats: int, out_file: str) -> None:
    """One rank of the kernel-shaped all-reduce timing (run inside its namespace)."""
    import torch

    from farsync.bench.allreduce_timing import time_allreduce
    from farsync.comm.clock import Clock
    from farsync.comm.communicator import Communicator
    from farsync.comm.groups import make_group, open_store

    torch.set_num_threads(1)
    store = open_store(f"{SUBNET}.1", PORT + 1, world, is_master=rank == 0, timeout_s=300)
    group = make_group(store, "timing", rank, world, timeout_s=300)
    results = {}
    for kind in ("fp32", "int8", "int4"):
        comm = Communicator(group, rank, world, clock=Clock("off"), link=None)
        results[kind] = time_allreduce(comm, numel, kind, repeats)  # type: ignore[arg-type]
    Path(out_file).write_text(json.dumps(results))
    store.add("timing/done", 1)
    if rank == 0:  # keep the store up until everyone has finished
        while int(store.add("timing/done", 0)) < world:
            time.sleep(0.05)


def kernel_timing(n: int, numel: int, repeats: int, out: Path) -> dict[str, Any]:
    files = [out / f"timing_rank{i}.json" for i in range(n)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "fs0", "FARSYNC_LOOPBACK": "0", "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                worker_ns(i),
                sys.executable,
                __file__,
                "--timing-worker",
                str(i),
                "--world",
                str(n),
                "--numel",
                str(numel),
                "--repeats",
                str(repeats),
                "--timing-out",
                str(files[i]),
            ],
            env=env,
        )  # fmt: skip
        for i in range(n)
    ]
    codes = [p.wait(timeout=1800) for p in processes]
    if any(codes):
        raise RuntimeError(f"timing workers exit codes {codes}")
    per_rank = [json.loads(f.read_text()) for f in files]
    slowest = {k: max((r[k] for r in per_rank), key=lambda x: x["seconds"]) for k in per_rank[0]}
    return {
        "kinds": slowest,
        "speedup": {k: slowest["fp32"]["seconds"] / v["seconds"] for k, v in slowest.items()},
    }


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bandwidth", default="20Mbit", help="each worker's link rate (tc tbf), e.g. 20Mbit")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--numel", type=int, default=1 << 20, help="all-reduce timing: vector length")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/netns_check.json")
    parser.add_argument("--keep", action="store_true", help="keep the namespaces afterwards")
    parser.add_argument("--timing-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--timing-out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timing_worker is not None:
        timing_worker(args.timing_worker, args.world, args.numel, args.repeats, args.timing_out)
        return 0
    if os.geteuid() != 0:
        print("netns_check: needs root (ip netns, tc)", file=sys.stderr)
        return 2
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        print(f"netns_check: --configs {unknown}: allowed: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    from farsync.bench.allreduce_timing import compare_allreduce
    from farsync.config import parse_bandwidth

    bandwidth_bps = parse_bandwidth(args.bandwidth, "--bandwidth")
    n = args.workers
    work = Path(tempfile.mkdtemp(prefix="farsync-netns-"))
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "bandwidth": args.bandwidth,
        "workers": n,
        "shaping": "tc tbf rate R burst 16kb on both directions of each worker's veth; star through a bridge",
        "command": "python benchmarks/netns_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": {},
    }
    try:
        setup(n, args.bandwidth)
        for name in args.configs.split(","):
            overrides = [*COMMON, *CONFIGS[name], f"network.bandwidth='{args.bandwidth}'"]
            emulated = predicted(name, overrides, work)
            kernel = kernel_shaped(name, overrides, work, n)
            error = emulated["wall_s"] / kernel["wall_s"] - 1.0
            report["runs"][name] = {
                "overrides": overrides,
                "predicted_wall_s": emulated["wall_s"],
                "kernel_wall_s": kernel["wall_s"],
                "relative_error": error,
                "within_15pct": abs(error) <= 0.15,
                "predicted_bytes_per_worker": emulated["bytes_sent_per_worker"],
                "predicted_compute_s": emulated["compute_s"],
                "kernel_compute_s": kernel["compute_s"],
                # Time not spent computing: what the link model predicts, free of the compute-speed noise of a
                # shared machine (the two runs cannot compute at exactly the same speed).
                "predicted_comm_s": emulated["wall_s"] - emulated["compute_s"],
                "kernel_comm_s": kernel["wall_s"] - kernel["compute_s"],
                "comm_relative_error": (emulated["wall_s"] - emulated["compute_s"])
                / max(kernel["wall_s"] - kernel["compute_s"], 1e-9)
                - 1.0,
                "eval_loss": {
                    "predicted_run": emulated["final_eval_loss"],
                    "kernel_run": kernel["final_eval_loss"],
                },
            }
            print(f"{name}: predicted {emulated['wall_s']:.2f} s, kernel-shaped {kernel['wall_s']:.2f} s, "
                  f"error {error:+.1%}", flush=True)  # fmt: skip
        report["allreduce_kernel"] = kernel_timing(n, args.numel, args.repeats, work)
        report["allreduce_emulated"] = compare_allreduce(
            world_size=n, numel=args.numel, bandwidth_bps=bandwidth_bps, kinds=("fp32", "int8", "int4"),
            repeats=args.repeats,
        )  # fmt: skip
        print("all-reduce speedup over gloo fp32, kernel-shaped:", report["allreduce_kernel"]["speedup"])
        print("all-reduce speedup over gloo fp32, emulated:     ", report["allreduce_emulated"]["speedup"])
    finally:
        if not args.keep:
            teardown(n)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
