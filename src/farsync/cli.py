"""``farsync train | rl | bench | report | export | coordinator | worker``: parses arguments and delegates.

Configuration errors stop here, before anything starts or is written: one line naming the key, the value
given and what is allowed, and exit code 2 (the launchers' checks are in :mod:`farsync.launch.preflight`).
Other exit codes: 1 a worker failed (its own output says why), 130 Ctrl-C, 128 + N stopped by signal N
(SIGTERM: 143), 3 to 5 an elastic worker refused, superseded or without its coordinator, 6 a checkpoint could
not be written (a full disk: one line names the directory, the free space and what a worker's file needs).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from farsync.config import ConfigError, RunConfig, load_config, read_config_data

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _train(args: argparse.Namespace) -> int:
    from farsync.launch.preflight import check_new_run_dir

    if args.resume:
        for flag, value in (("--out", args.out), ("--overwrite", args.overwrite)):
            if value:
                raise ConfigError(
                    flag, value, "cannot be combined with --resume (a run resumes in its own directory)"
                )
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise ConfigError("--resume", args.resume, "expected a run directory containing config.toml")
        config = load_config(run_dir / "config.toml", args.overrides)
        out_dir = run_dir
    else:
        config = load_config(args.config, args.overrides)
        out_dir = (
            Path(args.out)
            if args.out
            else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.algorithm.name}"
        )
        check_new_run_dir(out_dir, overwrite=args.overwrite)
    # Imported only once the config is valid: torch and the data stack take seconds to import.
    from farsync.train.lifetime import StopSignals

    with StopSignals():
        if args.elastic:
            summary = _train_elastic(config, out_dir, args)
        else:
            from farsync.launch.local import launch

            summary = launch(
                config,
                out_dir,
                resume=bool(args.resume),
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    line = (
        f"{summary['algorithm']}: eval loss {summary['final_eval_loss']:.4f}, "
        f"{summary['bytes_sent_per_worker'] / 1e6:.2f} MB sent per worker "
        f"({summary['bytes_reduction_vs_ddp'] or 0:.0f}x less than DDP), wall {summary['wall_s']:.1f}s, "
        f"compute utilisation {summary['compute_utilization']:.1%}"
    )
    print(line)
    print(f"outputs in {out_dir}/ (summary.json, metrics.jsonl, report.png)")
    return 0


def _train_elastic(config: RunConfig, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``farsync train --elastic``: the launcher's checks, then the elastic launcher."""
    from farsync.elastic.launch import launch_elastic
    from farsync.elastic.worker import check_elastic_config
    from farsync.launch.preflight import check_elastic_resume, check_run, clear_run_dir

    check_elastic_config(config)
    check_run(config)
    if args.resume:
        check_elastic_resume(config, out_dir)
    elif args.overwrite:
        clear_run_dir(out_dir)
    return launch_elastic(config, out_dir, progress=not args.no_progress)


def _rl(args: argparse.Namespace) -> int:
    """``farsync rl``: RL post-training (GRPO with decoupled inference workers), see docs/rl.md.

    A config with a ``[swarm]`` table (from the file or ``--set swarm.KEY=VALUE``) runs a SAPO swarm instead
    (:func:`_rl_swarm`). The file says which run it is, as ``farsync train``'s file says which algorithm: one
    command for RL post-training, one way to write and override its settings."""
    import os

    from farsync.launch.preflight import check_new_run_dir

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise ConfigError("--resume", args.resume, "expected an RL run directory containing config.toml")
        if "swarm" in read_config_data(run_dir / "config.toml"):
            raise ConfigError("--resume", args.resume, "a swarm run keeps no checkpoint; start a new run")
        config = load_config(run_dir / "config.toml", args.overrides)
    else:
        data = read_config_data(args.config, args.overrides)
        if "swarm" in data:
            return _rl_swarm(args, data)
        config = load_config(args.config, args.overrides)
        run_dir = Path(args.out) if args.out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-rl"
        check_new_run_dir(run_dir, overwrite=args.overwrite)
    import torch

    from farsync.rl.runner import run_rl

    torch.set_num_threads(max(1, int(os.environ.get("FARSYNC_THREADS", "1"))))
    summary = run_rl(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    print(
        f"rl {summary['mode']} on {summary['task']}: held-out pass@1 {summary['pass_at_1_start']:.3f} -> "
        f"{summary['pass_at_1_final']:.3f} in {summary['num_steps']} steps ({summary['rl_wall_s']:.1f}s); "
        f"{summary['intake']['dropped_stale']} stale rollouts dropped, "
        f"{sum(summary['intake']['rejected'].values())} rejected"
    )
    print(f"outputs in {run_dir}/ (summary.json, metrics.jsonl)")
    return 0


def _rl_swarm(args: argparse.Namespace, data: dict[str, Any]) -> int:
    """``farsync rl FILE`` with a ``[swarm]`` table: a SAPO swarm (:mod:`farsync.rl.swarm_run`), see
    docs/rl.md. The file holds ``[swarm]`` (with ``[swarm.loss]``, ``[swarm.limits]``) and ``[warm_start]``
    only: the swarm has its own task, model shapes and loss, so ``[rl]`` or ``[model]`` there is refused."""
    import os

    from farsync.launch.preflight import check_new_run_dir, clear_run_dir

    # torch is imported here, before the run directory is touched: SwarmSettings (which checks itself) lives
    # in the RL layer.
    from farsync.rl.swarm_run import load_swarm_config, result_line, run_swarm_in_dir

    config = load_swarm_config(data)
    run_dir = Path(args.out) if args.out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-swarm"
    check_new_run_dir(run_dir, overwrite=args.overwrite)
    if args.overwrite:
        clear_run_dir(run_dir)  # a directory transport must not read an earlier run's messages
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("FARSYNC_THREADS", "1"))))
    summary = run_swarm_in_dir(config, run_dir, progress=not args.no_progress)
    print(result_line(summary))
    print(f"outputs in {run_dir}/ (summary.json, metrics.jsonl)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from farsync.bench import run_benchmark

    run_benchmark(args.name, Path(args.out), quick=args.quick, sections=args.sections or None)
    return 0


def _report(args: argparse.Namespace) -> int:
    from farsync.report.compare import compare_runs

    dirs = [Path(d) for d in args.dirs]
    plot = Path(args.plot) if args.plot else dirs[0].parent / "comparison.png"
    print(compare_runs(dirs, plot))
    print(f"comparison plot: {plot}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from farsync.report.export import export_run

    max_shard_size: str | int = (
        int(args.max_shard_size) if args.max_shard_size.isdigit() else args.max_shard_size
    )
    written = export_run(args.run_dir, args.out, max_shard_size=max_shard_size, overwrite=args.overwrite)
    print(f"exported {len(written)} files to {args.out}/ (AutoModelForCausalLM.from_pretrained loads it)")
    return 0


def _coordinator(args: argparse.Namespace) -> int:
    from farsync.elastic.coordinator import serve
    from farsync.launch.preflight import check_port

    check_port(args.host, args.port)
    return serve(port=args.port, min_workers=args.min_workers, token_file=args.token_file, host=args.host)


def _worker(args: argparse.Namespace) -> int:
    from farsync.elastic.client import EXIT_COORDINATOR_LOST, CoordinatorLost
    from farsync.elastic.worker import check_elastic_config, join
    from farsync.launch.preflight import check_run

    config = load_config(args.config, args.overrides)
    check_elastic_config(config)
    check_run(config)
    try:
        return join(
            config, args.coordinator, token_file=args.token_file, out_dir=Path(args.out) if args.out else None
        )
    except CoordinatorLost as error:
        print(f"farsync {error}", file=sys.stderr)
        return EXIT_COORDINATOR_LOST


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farsync", description="Low-communication training across far-apart machines."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train with local worker processes (default: DiLoCo, 4 workers)"
    )
    train.add_argument("config", nargs="?", help="TOML config file (optional)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--out", help="run directory, new or empty (default runs/<time>-<algorithm>)")
    train.add_argument(
        "--overwrite", action="store_true", help="clear the --out directory of an earlier run first"
    )
    train.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its latest good checkpoint"
    )
    train.add_argument(
        "--elastic", action="store_true", help="start a coordinator and elastic workers locally"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    rl = commands.add_parser(
        "rl", help="RL post-training: GRPO with decoupled inference workers, or a SAPO swarm ([swarm] table)"
    )
    rl.add_argument(
        "config", nargs="?", help="TOML config file with an [rl] section, or a [swarm] one (optional)"
    )
    rl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rl.add_argument("--out", help="run directory, new or empty (default runs/<time>-rl or <time>-swarm)")
    rl.add_argument(
        "--overwrite", action="store_true", help="clear the --out directory of an earlier run first"
    )
    rl.add_argument("--resume", metavar="DIR", help="continue the RL run in DIR from its last checkpoint")
    rl.add_argument("--no-progress", action="store_true", help="no progress bar")
    rl.set_defaults(handler=_rl)

    bench = commands.add_parser(
        "bench",
        help="run a named benchmark (core, dilocox, quality, frontier, byzantine, federated, chaos, hf, rl, rl_swarm)",
    )
    bench.add_argument("name")
    bench.add_argument("--out", default="benchmarks/results")
    bench.add_argument("--quick", action="store_true", help="a much smaller version, to check it runs")
    bench.add_argument(
        "--section",
        dest="sections",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this section (repeatable; rl: grpo, swarm; default: all, in that order)",
    )
    bench.set_defaults(handler=_bench)

    report = commands.add_parser("report", help="compare finished runs side by side")
    report.add_argument("dirs", nargs="+")
    report.add_argument("--plot", help="where to write the comparison plot")
    report.set_defaults(handler=_report)

    export = commands.add_parser(
        "export", help="write a Hugging Face model directory from a finished run's final global weights"
    )
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--out", required=True, metavar="DIR", help="the model directory to write")
    export.add_argument("--max-shard-size", default="2GB", help="largest safetensors file (e.g. 500MB)")
    export.add_argument("--overwrite", action="store_true", help="replace a previous export in DIR")
    export.set_defaults(handler=_export)

    coordinator = commands.add_parser("coordinator", help="host an elastic run's membership")
    coordinator.add_argument("--port", type=int, required=True)
    coordinator.add_argument(
        "--host", default="127.0.0.1", help="the one address to listen on (default loopback; others warn)"
    )
    coordinator.add_argument("--min-workers", type=int, default=1)
    coordinator.add_argument("--token-file")
    coordinator.set_defaults(handler=_coordinator)

    worker = commands.add_parser("worker", help="join an elastic run")
    worker.add_argument("config", nargs="?")
    worker.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    worker.add_argument("--token-file")
    worker.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    worker.add_argument("--out")
    worker.set_defaults(handler=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args))
    except ConfigError as error:
        print(f"farsync: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except FileNotFoundError as error:
        print(f"farsync: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)  # farsync.train.lifetime.Stopped carries its signal
        print(f"farsync: {'interrupted' if signum == signal.SIGINT else error}", file=sys.stderr)
        return 128 + int(signum)
    except RuntimeError as error:
        checkpoint = sys.modules.get("farsync.train.checkpoint")
        if checkpoint is not None and isinstance(error, checkpoint.CheckpointWriteError):
            print(f"farsync: {error}", file=sys.stderr)  # one line: the directory, free space and need
            return int(checkpoint.EXIT_CHECKPOINT_WRITE)
        local = sys.modules.get("farsync.launch.local")
        if local is None or not isinstance(error, local.WorkerFailed):
            raise
        # The workers have printed why; a launcher traceback would only bury it.
        print(f"farsync: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
