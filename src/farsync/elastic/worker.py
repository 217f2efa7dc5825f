"""An elastic worker: the core training loop composed with elastic parts, joined to a coordinator.

``farsync worker --coordinator HOST:PORT CONFIG.toml --token-file F`` runs :func:`join`. The worker

1. reads the run's token from the file and joins (refused: a clear message and exit code 3, no effect on
   the run); its slot (hence its data shard) is ``$FARSYNC_WORKER_ID`` or the lowest free one;
2. starts heart-beating from a thread of its own;
3. arrives at the next round boundary without a pseudo-gradient: the quorum it joins heals it (global
   weights, outer momentum, round and step counters from a live peer) and it contributes weight 0 to that
   boundary's collective, then trains from the new global weights like everyone else;
4. at every later boundary synchronises through :class:`~farsync.elastic.reducer.ElasticReducer`;
5. at the end puts its result in the coordinator's store; the last quorum's source collects the members'
   results and writes ``summary.json`` with the ``farsync train`` contract (:mod:`farsync.elastic.summary`).

The loop is :class:`farsync.train.TrainingLoop` built from an :class:`ElasticMember`'s parts: a
world-size-1 communicator (the reducer builds one per quorum), the elastic reducer (the algorithm is built
with it), join-and-heal as the resume hook, the source's checkpoint as the checkpoint hook, quorum figures on
round records and the elastic figures on the result.

**Data.** Shards are fixed by the configured ``num_workers`` slots: a worker trains on the shard of its slot,
a restarted worker takes its slot back, and a slot nobody holds simply contributes nothing while empty.
Changing ``num_workers`` (resuming with a different count) reshards the data into that many slots, because
the shard is a pure function of (seed, slot, num_workers).

**Checkpoints** (``checkpoint.every_rounds``): the quorum's source writes the global state (identical on
every member) under ``OUT/elastic/checkpoints``; a worker started with that directory resumes from it and
heals the others, whatever their number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from farsync.algorithms.diloco import DiLoCo, OuterState
from farsync.comm.clock import Clock
from farsync.comm.communicator import Communicator
from farsync.comm.ledger import ByteLedger
from farsync.config import ConfigError, RunConfig, config_to_toml
from farsync.elastic.client import (
    CoordinatorClient,
    JoinRefused,
    RunFinished,
    Superseded,
    config_digest,
    parse_address,
)
from farsync.elastic.quorum import Decision
from farsync.elastic.reducer import ElasticReducer
from farsync.elastic.summary import (
    collect_results,
    publish_elastic_result,
    read_worker_records,
    write_elastic_summary,
)
from farsync.elastic.token import read_token
from farsync.sim.attacking import build_attacking_reducer
from farsync.train import LoopParts, TrainingLoop, WorkerContext, WorkerResult, lr_lambda
from farsync.train.build import build_reducer
from farsync.train.checkpoint import find_latest, load_worker_state, prune, save_worker_state

__all__ = ["EXIT_REFUSED", "ElasticMember", "ElasticWorkerResult", "check_elastic_config", "join"]

logger = logging.getLogger(__name__)

EXIT_REFUSED = 3
EXIT_SUPERSEDED = 4

HOLD_ENV = "FARSYNC_HOLD_AT"
"""``ROUND,STEP``: fault simulation only. The worker parks once its progress reaches that point (reporting
it in its heartbeat) until it is killed, so a scheduled SIGKILL lands exactly there (elastic.launch)."""
HOLD_MAX_S = 120.0
"""A parked worker nobody kills goes on after this long, with a warning."""


def check_elastic_config(config: RunConfig) -> None:
    """Elastic runs need a synchronous outer step over global weights (DiLoCo family, delay 0)."""
    if config.algorithm.name not in ("diloco", "fedavg"):
        raise ConfigError(
            "algorithm.name", config.algorithm.name, "elastic runs support 'diloco' and 'fedavg'"
        )
    if config.algorithm.delay != 0:
        raise ConfigError(
            "algorithm.delay", config.algorithm.delay, "elastic runs need 0 (a synchronous outer step)"
        )
    if config.parallel.num_stages != 1:
        raise ConfigError("parallel.num_stages", config.parallel.num_stages, "elastic runs need 1")
    if config.parallel.num_shards != 1:
        raise ConfigError(
            "parallel.num_shards",
            config.parallel.num_shards,
            "elastic runs need 1 (a sharded replica's FSDP group cannot lose or gain members)",
        )


@dataclass(kw_only=True)
class ElasticWorkerResult(WorkerResult):
    """An elastic worker's result: the core fields plus ``elastic`` (slot, incarnation, rounds and inner
    steps lost, collective retries, healing times)."""

    elastic: dict[str, Any]


class ElasticMember:
    """The elastic parts of one worker and the loop built from them (:attr:`loop`).

    Implements :class:`~farsync.elastic.reducer.ElasticTarget` over the loop's state. ``ctx.rank`` is the
    worker's slot and ``ctx.world_size`` the configured number of slots (data shards).
    """

    def __init__(self, config: RunConfig, ctx: WorkerContext, client: CoordinatorClient) -> None:
        # The algorithm sees a world-size-1 communicator here, so an outer lr / momentum left to the rule is
        # resolved for the configured number of slots now (config.outer_recipe), as a plain run resolves it
        # for its group; a quorum that shrinks for a while keeps the recipe of the full run.
        sparse = config.compression.kind in ("sparseloco", "sparseloco_dct")  # the buffer replaces momentum
        recipe = config.algorithm.with_outer_recipe(config.num_workers, error_feedback_momentum=sparse)
        config = dataclasses.replace(config, algorithm=recipe)
        self.config, self.ctx, self.client = config, ctx, client
        clock = Clock(config.network.emulation, step_time_s=config.network.step_time_s)
        ledger = ByteLedger(rank=ctx.rank)
        # No fixed group: the elastic reducer builds one per quorum over this communicator's ledger and clock.
        local = Communicator(None, 0, 1, ledger=ledger, clock=clock, link=None)
        self.reducer = ElasticReducer(
            local,
            client=client,
            config=config,
            build_inner=lambda comm: build_reducer(config, comm, ctx.reducer_wrappers),
            sink=lambda record: self.loop.emit(record),
        )
        self.loop = TrainingLoop(
            config,
            ctx,
            LoopParts(
                clock=clock,
                ledger=ledger,
                comm=local,
                reducer=self.reducer,
                decorate=self.decorate,
                finish=self.finish,
                resume=self.join_quorum,
                checkpoint=self.checkpoint,
            ),
        )
        algorithm = self.loop.algorithm
        assert isinstance(algorithm, DiLoCo), "check_elastic_config admits the DiLoCo family only"
        self.diloco: DiLoCo = algorithm
        self.reducer.target = self
        self.held: tuple[int, int] | None = None
        """The (round, step) this worker is parked at, while it is (see :data:`HOLD_ENV`)."""
        hold = os.environ.get(HOLD_ENV, "")
        self._hold_point = tuple(int(part) for part in hold.split(",")) if hold else None
        if self._hold_point is not None:
            self.loop.optimizer.register_step_post_hook(lambda *_: self._hold_if_due())

    def _hold_if_due(self) -> None:
        """After the optimizer step that reaches the hold point: report it and wait to be killed (once)."""
        here = (self.diloco.round, self.loop.step + 1)  # the loop counts this step after the hook
        if self._hold_point is None or here < self._hold_point:
            return
        self._hold_point, self.held = None, here
        deadline = time.monotonic() + HOLD_MAX_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
        self.held = None
        logger.warning(
            "worker %d: held at %s for %gs and not killed; going on", self.ctx.rank, here, HOLD_MAX_S
        )

    # ------------------------------------------------------------------------- ElasticTarget protocol
    @property
    def outer(self) -> OuterState:
        return self.diloco.outer

    def arrival_state(self, pending: bool) -> dict[str, Any]:
        # Inside the optimizer hook the loop has not counted the step that ended the round yet.
        step = self.loop.step + 1 if pending else self.loop.step
        return {"round": self.diloco.round, "step": step, "sha": self.diloco.global_sha256()}

    def on_healed(self, decision: Decision, pending: bool) -> None:
        self.diloco.round = decision.round
        self.diloco.inner_step = decision.step
        self.diloco.steps_in_round = 0
        self._set_step(decision.step - 1 if pending else decision.step)
        self.loop.optimizer.state.clear()  # inner AdamW moments start from zero (see farsync.elastic.healing)
        self._reseed_batches(decision.round)

    def _set_step(self, step: int) -> None:
        loop = self.loop
        loop.step = step
        loop.scheduler.last_epoch = step
        factor = lr_lambda(self.config.train)(step)
        for group, base in zip(loop.optimizer.param_groups, loop.scheduler.base_lrs, strict=True):
            group["lr"] = base * factor

    def _reseed_batches(self, round_index: int) -> None:
        batches = self.loop.task.batches
        state = batches.state_dict()
        generator = torch.Generator()
        generator.manual_seed(self.config.seed * 7919 + self.ctx.rank + 1_000_003 * (round_index + 1))
        state["generator_state"] = generator.get_state()
        if "position" in state:
            state["position"] = 0
        batches.load_state_dict(state)

    # ------------------------------------------------------------------------------ the loop's hooks
    def join_quorum(self, loop: TrainingLoop) -> None:
        """The resume hook: this directory's elastic checkpoint (if any), then a quorum to join and heal."""
        self._resume_from_checkpoint()
        zeros = {
            name: torch.zeros_like(p, dtype=torch.float32) for name, p in self.diloco.named_params.items()
        }
        decision, averaged = self.reducer.synchronise(zeros, 0.0, pending=False)
        round_index = decision.round
        if averaged is not None:
            self.diloco.outer.step(averaged)  # the members' outer step of this boundary, applied here too
            round_index += 1
        self.diloco.round, self.diloco.inner_step = round_index, decision.step
        self.diloco.steps_in_round = 0
        self._set_step(decision.step)
        self.diloco.load_global_into_model()
        loop.emit(
            {
                "kind": "join",
                "round": round_index,
                "step": loop.step,
                "quorum_id": decision.quorum_id,
                "members": list(decision.members),
                "healed": self.ctx.rank in decision.healers,
            }
        )

    def _resume_from_checkpoint(self) -> None:
        if self.ctx.out_dir is None:
            return
        found = find_latest(self.ctx.out_dir / "elastic", 1)
        if found is None:
            return
        round_index, directory = found
        state = load_worker_state(directory, 0)
        self.diloco.outer.load_state_dict(state["outer"])
        self.diloco.round = int(state["round"])
        self.diloco.inner_step = int(state["step"])
        self._set_step(int(state["step"]))
        self.diloco.load_global_into_model()
        self.loop.emit(
            {
                "kind": "resume",
                "round": round_index,
                "step": self.loop.step,
                "num_workers": self.ctx.world_size,
            }
        )

    def checkpoint(self, loop: TrainingLoop) -> None:
        """The checkpoint hook: the quorum's source writes the global state, identical on every member."""
        every = self.config.checkpoint.every_rounds
        decision = self.reducer.decision
        if not every or self.ctx.out_dir is None or self.diloco.round % every != 0:
            return
        if decision is None or decision.source != self.ctx.rank:
            return  # one copy is enough: every member holds the same global state
        root = self.ctx.out_dir / "elastic"
        state = {"outer": self.diloco.outer.state_dict(), "round": self.diloco.round, "step": loop.step}
        save_worker_state(root, self.diloco.round, 0, state)
        prune(root, self.config.checkpoint.keep)

    def decorate(self, record: dict[str, Any]) -> None:
        """Round records carry the quorum's id and size, rounds lost and collective retries."""
        if record.get("kind") == "round":
            record.update(self.reducer.metrics())

    def finish(self, loop: TrainingLoop, result: WorkerResult) -> ElasticWorkerResult:
        return ElasticWorkerResult(**vars(result), elastic=self.elastic_figures())

    def elastic_figures(self) -> dict[str, Any]:
        return {
            "slot": self.ctx.rank,
            "incarnation": self.client.incarnation,
            "rounds_lost": self.reducer.rounds_lost,
            "inner_steps_lost": self.reducer.inner_steps_lost,
            "collective_retries": self.reducer.retries,
            "heal_times_s": self.reducer.heal_times,
            "rejected_messages": self.client.rejections.total,
        }

    # ------------------------------------------------------------------------------------ the end
    def is_final_source(self) -> bool:
        """Whether this worker is the source of the last committed quorum (it writes the run's summary)."""
        decision = self.reducer.decision
        return decision is None or decision.source == self.ctx.rank

    def final_members(self) -> list[int]:
        decision = self.reducer.decision
        return list(decision.members) if decision is not None else [self.ctx.rank]


def _slot_from_environment() -> int | None:
    text = os.environ.get("FARSYNC_WORKER_ID", "")
    if not text:
        return None
    if not text.isdigit():
        raise ConfigError("FARSYNC_WORKER_ID", text, "expected a worker slot number >= 0")
    return int(text)


def _finish_run(config: RunConfig, member: ElasticMember, result: WorkerResult, out_dir: Path | None) -> None:
    """Publishes this worker's result; the final quorum's source also writes the run's ``summary.json``.

    The source waits for the other members' results before it leaves, so a standalone coordinator (which
    exits once every worker has left) keeps its store up until the summary is written.
    """
    payload = vars(result)
    client = member.client
    assert client.slot is not None
    publish_elastic_result(client.store, client.slot, payload, client.result_key)
    if out_dir is not None:
        (out_dir / f"result.worker{client.slot}.json").write_text(json.dumps(payload) + "\n")
    if out_dir is None or not member.is_final_source():
        return
    others = [slot for slot in member.final_members() if slot != client.slot]
    timeout_s = max(config.elastic.failure_timeout_s, config.elastic.collective_timeout_s)
    collected = collect_results(client.store, others, timeout_s, client.result_key, client.rejections)
    payload["elastic"]["rejected_messages"] = client.rejections.total  # with the results it rejected
    status = client.status()
    by_coordinator = status.rejected_messages if status is not None else 0
    write_elastic_summary(
        config, out_dir, [payload, *collected], read_worker_records(out_dir), by_coordinator
    )


def join(
    config: RunConfig, coordinator: str, token_file: str | Path | None = None, out_dir: Path | None = None
) -> int:
    """``farsync worker``: joins the run at ``coordinator`` and trains until the run ends. Returns the exit code."""
    check_elastic_config(config)
    host, port = parse_address(coordinator)
    token = read_token(token_file)
    torch.set_num_threads(max(1, int(os.environ.get("FARSYNC_THREADS", "1"))))
    holder: dict[str, ElasticMember] = {}

    def progress() -> tuple[int, int]:
        member = holder.get("member")
        if member is None:
            return (-1, -1)
        return member.held or (member.loop.algorithm.round, member.loop.step)

    client = CoordinatorClient(
        host,
        port,
        token=token,
        slot=_slot_from_environment(),
        config_sha=config_digest(config_to_toml(config)),
        num_slots=config.num_workers,
        elastic=dataclasses.asdict(config.elastic),
        progress=progress,
    )
    try:
        client.register(client.store)
    except JoinRefused as error:
        print(f"farsync worker: {error}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    assert client.slot is not None
    print(
        f"farsync worker {client.slot}: admitted (incarnation {client.incarnation})",
        file=sys.stderr,
        flush=True,
    )
    client.start_heartbeat(config.elastic.heartbeat_interval_s)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / f"metrics.worker{client.slot}.jsonl" if out_dir is not None else None
    metrics_file = open(metrics_path, "a") if metrics_path is not None else None  # noqa: SIM115 - closed below

    def sink(record: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    wrappers = (build_attacking_reducer,) if config.byzantine.workers else ()
    ctx = WorkerContext(
        client.slot, config.num_workers, client.store, out_dir, sink, reducer_wrappers=wrappers
    )
    try:
        member = ElasticMember(config, ctx, client)
        holder["member"] = member
        result = member.loop.run()
    except RunFinished:
        print(
            f"farsync worker {client.slot}: the run finished before this worker could join", file=sys.stderr
        )
        client.leave(finished=False)
        return 0
    except Superseded as error:
        print(f"farsync worker {client.slot}: {error}; exiting", file=sys.stderr)
        return EXIT_SUPERSEDED
    except JoinRefused as error:
        print(f"farsync worker: {error}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    finally:
        if metrics_file is not None:
            metrics_file.close()
    _finish_run(config, member, result, out_dir)
    client.leave(finished=True)
    print(
        f"farsync worker {client.slot}: finished at round {result.num_rounds}, eval loss "
        f"{result.final_eval.get('eval_loss', float('nan')):.4f}, global sha {result.global_params_sha256[:12]}",
        file=sys.stderr,
        flush=True,
    )
    return 0
