"""One run of ``farsync bench byzantine``'s breakdown curve, simulated in one process.

The threaded runs (:mod:`farsync.bench.byzantine_sync`, and the DiLoCo runs through the training loop)
cost a minute each for the synchronous regime on two cores; the breakdown curve needs hundreds of runs.
This module runs the same arithmetic as one process, worker after worker:

- the same data shards, batches, model and loss as every worker of a real run (:func:`build_task` for
  each rank, so shard ``r`` and its batch order are rank ``r``'s);
- the same aggregation, shard by shard as the butterfly does it: the ``n`` sent vectors are cut with
  :class:`~farsync.collectives.butterfly.ShardLayout` into ``n`` shards and each is aggregated by the
  owner's :class:`~farsync.reducers.shard_rule.ShardAggregator`, reseeded with the round (bucketing) and
  started, with ``clip_start = "previous"``, from its shard of the last aggregate;
- the same worker momentum (:class:`~farsync.reducers.momentum.WorkerMomentum`) and the same attacks
  (:func:`farsync.sim.attacking.build_attack`), forging from the honest vectors as sent, with the context
  the attacking reducer gives them (colluders' and honest peers' vectors, own history, a generator seeded
  per rank);
- DiLoCo's inner AdamW (betas 0.9, 0.95, the run's weight decay, warm-up then cosine schedule, gradient
  clipping) per worker, and its outer Nesterov SGD (:class:`~farsync.algorithms.diloco.OuterState`).

Left out, because they do not change the arithmetic of these runs: the network (no bytes are counted
here; the verification-cost rows of the benchmark use the threaded runs), update validation (no
``max_norm``; every attack here sends finite vectors of the right shape) and strikes.
``tests/bench/test_byzantine_sim.py`` checks one round against the real reducer over gloo.

A clean run (no attacker) also reports the honest workers' **noise-to-signal ratio**: the root mean
square distance of the sent vectors to their mean, over the norm of that mean, averaged over the first and
the last tenth of the rounds, for what is sent (momenta with worker momentum) and for the raw updates.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import deque
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from farsync.algorithms.diloco import OuterState
from farsync.collectives.butterfly import ShardLayout
from farsync.config import DataConfig, RunConfig
from farsync.data import ArrayBatches
from farsync.data.classification import ClassificationData, flip_labels, load_digits_split, load_npz
from farsync.reducers.momentum import WorkerMomentum
from farsync.reducers.shard_rule import ShardAggregator
from farsync.sim.attacking import build_attack
from farsync.sim.attacks import LABEL_FLIP, Attack, AttackContext
from farsync.train.schedule import lr_lambda
from farsync.train.task import Task, build_model, check_batch_fits, partition_labels

__all__ = ["SimulatedAggregation", "noise_to_signal", "run_simulated"]

logger = logging.getLogger(__name__)

_HISTORY = 16  # as the attacking reducer keeps


def noise_to_signal(rows: torch.Tensor) -> float:
    """``sqrt(mean_i ||row_i - mean||^2) / ||mean||`` of a ``[k, d]`` stack (inf for a zero mean)."""
    mean = rows.mean(dim=0)
    spread = float((rows - mean).pow(2).sum(dim=1).mean().sqrt())
    norm = float(torch.linalg.vector_norm(mean))
    return spread / norm if norm > 0 else float("inf")


class SimulatedAggregation:
    """The robust path of one round on a ``[n, d]`` stack of sent vectors, as the butterfly computes it."""

    def __init__(self, config: RunConfig) -> None:
        aggregation = config.aggregation
        self.plain_mean = not aggregation.needs_robust_reducer
        self.aggregator = ShardAggregator(aggregation, adaptive_tau=aggregation.adaptive_tau)
        self.previous: torch.Tensor | None = None
        self.round = 0

    def __call__(self, sent: torch.Tensor) -> torch.Tensor:
        n, d = sent.shape
        if self.plain_mean:
            result = sent.mean(dim=0)
        else:
            layout = ShardLayout(d, n)
            size = layout.shard_size
            padded = sent.new_zeros(n, size * n)
            padded[:, :d] = sent
            stacks = padded.view(n, n, size)
            starts = layout.split(self.previous) if self.previous is not None else [None] * n
            weights = torch.ones(n)
            shards = []
            for owner in range(n):
                self.aggregator.reseed(self.round)
                shards.append(self.aggregator(stacks[:, owner, :], weights, starts[owner]))
            result = layout.join(shards)
        if self.aggregator.uses_history:
            self.previous = result.clone()
        self.round += 1
        return result


_SAME_FOR_ALL = ("alie", "ipm", "mimic", "min_max", "min_sum")
"""Built-in attacks whose forgery reads only the colluders' and honest peers' vectors (not the worker, its
own update, history or generator): every attacker sends the same vector, computed once per round here."""


class _Attackers:
    """The Byzantine ranks' forgeries, with the context :class:`~farsync.sim.attacking.AttackingReducer` gives."""

    def __init__(self, config: RunConfig) -> None:
        self.shared = config.byzantine.attack in _SAME_FOR_ALL
        self.byzantine = sorted(set(config.byzantine.workers))
        self.attack: Attack | None = build_attack(config.byzantine) if self.byzantine else None
        self.history: dict[int, deque[torch.Tensor]] = {r: deque(maxlen=_HISTORY) for r in self.byzantine}
        self.generators = {
            r: torch.Generator().manual_seed(config.seed * 1_000_003 + r) for r in self.byzantine
        }
        self.round = 0

    def __call__(self, honest: torch.Tensor) -> torch.Tensor:
        if self.attack is None:
            return honest
        n = honest.shape[0]
        colluders = [honest[r] for r in self.byzantine]
        peers = [honest[r] for r in range(n) if r not in self.byzantine]
        sent = honest.clone()
        forged: torch.Tensor | None = None
        for rank in self.byzantine:
            ctx = AttackContext(
                round=self.round,
                worker=rank,
                num_workers=n,
                num_byzantine=len(self.byzantine),
                honest_updates=colluders,
                history=list(self.history[rank]),
                generator=self.generators[rank],
                honest_peers=peers,
            )
            if forged is None or not self.shared:
                forged = self.attack(honest[rank].clone(), ctx)
            sent[rank] = forged
            self.history[rank].append(honest[rank].clone())
        self.round += 1
        return sent


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]).float()


_DATASETS: dict[tuple[str, str, int], ClassificationData] = {}


def _dataset(data: DataConfig, seed: int) -> ClassificationData:
    """The split every worker of a run loads, read once per process (the grid runs hundreds of runs)."""
    key = (data.kind, data.path, seed)
    if key not in _DATASETS:
        _DATASETS[key] = (
            load_digits_split(seed=seed) if data.kind == "digits" else load_npz(data.path, seed=seed)
        )
    return _DATASETS[key]


def _tasks(config: RunConfig) -> list[Task]:
    """Every rank's task as :func:`~farsync.train.task.build_task` builds it for classification data (the
    same shard, batch order and initial model; ``tests/bench/test_byzantine_sim.py`` pins that), with the
    dataset read once."""
    data, seed, n = config.data, config.seed, config.num_workers
    if data.kind not in ("digits", "npz") or config.model.kind != "mlp":
        raise ValueError("the simulated Byzantine runs take an MLP on classification data (digits or npz)")
    dataset = _dataset(data, seed)
    parts = partition_labels(dataset.y_train.numpy(), n, data, seed)
    check_batch_fits(data, config.train.batch_size, n, [len(p) for p in parts])
    torch.manual_seed(seed)
    model = build_model(config.model, dataset.num_features, dataset.num_classes)
    flip = config.byzantine.attack == LABEL_FLIP
    tasks = []
    for rank in range(n):
        index = torch.as_tensor(parts[rank], dtype=torch.long)
        x, y = dataset.x_train[index], dataset.y_train[index]
        if flip and rank in config.byzantine.workers:
            y = flip_labels(y, dataset.num_classes)
        batches = ArrayBatches(x, y, config.train.batch_size, seed=seed * 7919 + rank)
        evaluation = [(dataset.x_test, dataset.y_test)]
        own = model if rank == 0 else copy.deepcopy(model)
        tasks.append(
            Task(own, batches, "classification", evaluation, config.train.batch_size, len(index), "fp32")
        )
    return tasks


def _gradients(model: nn.Module, tasks: list[Task]) -> torch.Tensor:
    """Every worker's gradient at ``model`` on its next batch, ``[n, d]``: :meth:`Task.loss`'s cross-entropy
    (fp32 classification), differentiated for all workers at once with ``torch.func``."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    batches = [next(task.batches) for task in tasks]

    def loss(weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, weights, (x,)).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    if len({x.shape for x, _ in batches}) > 1:  # an epoch's last, shorter batch somewhere: one at a time
        rows = [torch.func.grad(loss)(params, x, y) for x, y in batches]
        return torch.stack([torch.cat([g[name].reshape(-1) for name in params]) for g in rows]).float()
    xs = torch.stack([x for x, _ in batches])
    ys = torch.stack([y for _, y in batches])
    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
    return torch.cat([grads[name].reshape(len(tasks), -1) for name in params], dim=1).float()


class _Momenta:
    """One :class:`WorkerMomentum` per worker over flat vectors (identity when ``beta`` is 0)."""

    def __init__(self, beta: float, n: int) -> None:
        self.workers = [WorkerMomentum(beta) for _ in range(n)] if beta > 0 else []

    def __call__(self, updates: torch.Tensor) -> torch.Tensor:
        if not self.workers:
            return updates
        return torch.stack([m({"v": row})["v"] for m, row in zip(self.workers, updates, strict=True)])


def _set_flat(params: list[nn.Parameter], flat: torch.Tensor, attribute: str) -> None:
    offset = 0
    for param in params:
        count = param.numel()
        value = flat[offset : offset + count].reshape(param.shape).to(param.dtype)
        if attribute == "grad":
            param.grad = value.clone()
        else:
            with torch.no_grad():
                param.copy_(value)
        offset += count


def _diverged(sent: torch.Tensor, diverged: list[bool]) -> bool:
    """Whether a round's vectors hold a value that is not finite: the run has diverged (an attack blew the
    model up, so the honest gradients overflow too). The run then stops and is scored as it stands: the
    distributed reducer's validation would reject the non-finite vectors and, with every honest one among
    them, have nothing left to aggregate; a rule's radius computed from them would be NaN."""
    if bool(torch.isfinite(sent).all()):
        return False
    diverged.append(True)
    return True


def _run_sync(
    config: RunConfig,
    lr: float,
    server_momentum: float,
    schedule: str,
    noise: list[tuple[float, float]],
    diverged: list[bool],
) -> Task:
    tasks = _tasks(config)
    model = tasks[0].model
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=server_momentum)
    factor = lr_lambda(config.train) if schedule == "cosine" else (lambda step: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    momenta = _Momenta(config.aggregation.resolved().worker_momentum, config.num_workers)
    attackers, aggregate = _Attackers(config), SimulatedAggregation(config)
    honest_ranks = [r for r in range(config.num_workers) if r not in attackers.byzantine]
    for _ in range(config.train.num_steps):
        grads = _gradients(model, tasks)
        honest = momenta(grads)
        sent = attackers(honest)
        if _diverged(sent, diverged):
            break
        noise.append((noise_to_signal(honest[honest_ranks]), noise_to_signal(grads[honest_ranks])))
        _set_flat(params, aggregate(sent), "grad")
        optimizer.step()
        scheduler.step()
    return tasks[0]


def _run_diloco(config: RunConfig, noise: list[tuple[float, float]], diverged: list[bool]) -> Task:
    tasks = _tasks(config)
    train, algorithm = config.train, config.algorithm.with_outer_recipe(config.num_workers)
    models = [task.model for task in tasks]
    optimizers = [
        torch.optim.AdamW(m.parameters(), lr=train.lr, betas=(0.9, 0.95), weight_decay=train.weight_decay)
        for m in models
    ]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(train)) for o in optimizers]
    outer = OuterState(dict(models[0].named_parameters()), algorithm)
    momenta = _Momenta(config.aggregation.resolved().worker_momentum, config.num_workers)
    attackers, aggregate = _Attackers(config), SimulatedAggregation(config)
    honest_ranks = [r for r in range(config.num_workers) if r not in attackers.byzantine]
    num_rounds = train.num_steps // algorithm.num_inner_steps
    for _ in range(num_rounds):
        start = _flat([p.detach() for p in outer.params.values()])
        deltas = []
        for model, optimizer, scheduler, task in zip(models, optimizers, schedulers, tasks, strict=True):
            params = list(model.parameters())
            _set_flat(params, start, "data")
            for _ in range(algorithm.num_inner_steps):
                x, y = next(task.batches)
                optimizer.zero_grad(set_to_none=True)
                task.loss(model, x, y).backward()  # type: ignore[no-untyped-call]
                if train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
                optimizer.step()
                scheduler.step()
            deltas.append(start - _flat([p.detach() for p in params]))
        raw = torch.stack(deltas)
        honest = momenta(raw)
        sent = attackers(honest)
        if _diverged(sent, diverged):
            break
        noise.append((noise_to_signal(honest[honest_ranks]), noise_to_signal(raw[honest_ranks])))
        averaged = aggregate(sent)
        names = list(outer.params)
        shapes = [outer.params[name].shape for name in names]
        pieces = torch.split(averaged, [s.numel() for s in shapes])
        outer.step(
            {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes, strict=True)}
        )
    _set_flat(list(models[0].parameters()), _flat([p.detach() for p in outer.params.values()]), "data")
    return tasks[0]


def _tenths(noise: list[tuple[float, float]], column: int) -> dict[str, float]:
    count = max(1, len(noise) // 10)
    first = [row[column] for row in noise[:count]]
    last = [row[column] for row in noise[-count:]]
    return {"start": sum(first) / len(first), "end": sum(last) / len(last)}


def run_simulated(
    config: RunConfig,
    regime: str,
    *,
    lr: float = 0.1,
    server_momentum: float = 0.0,
    schedule: str = "constant",
) -> dict[str, Any]:
    """Trains ``config`` in ``regime`` (``"sync"``: a gradient step per round with SGD of ``lr`` and
    ``server_momentum`` on the aggregate; ``"diloco"``: the configured DiLoCo) and returns the final
    accuracy and loss of the global model, the noise-to-signal ratios and the seconds taken.

    ``schedule`` (sync only): ``"constant"`` keeps ``lr``; ``"cosine"`` multiplies it by
    :func:`~farsync.train.schedule.lr_lambda` of ``config.train`` (linear warm-up over
    ``train.warmup_steps``, then cosine decay to ``train.min_lr_ratio`` at ``train.num_steps``)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    begin, process = time.perf_counter(), time.process_time()
    noise: list[tuple[float, float]] = []
    diverged: list[bool] = []
    if regime == "sync":
        task = _run_sync(config, lr, server_momentum, schedule, noise, diverged)
    elif regime == "diloco":
        task = _run_diloco(config, noise, diverged)
    else:
        raise ValueError(f"regime must be 'sync' or 'diloco', got {regime!r}")
    metrics = task.evaluate(task.model)
    loss = float(metrics["eval_loss"])
    return {
        "final_eval_accuracy": float(metrics["eval_accuracy"]),
        "final_eval_loss": loss if math.isfinite(loss) else float("inf"),
        "diverged": bool(diverged),
        "noise_to_signal_sent": _tenths(noise, 0),
        "noise_to_signal_raw": _tenths(noise, 1),
        "num_rounds": len(noise),
        "seconds": time.perf_counter() - begin,
        "cpu_seconds": time.process_time() - process,
    }
