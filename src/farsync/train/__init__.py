"""The training loop and what it is built from: context and result, schedule, task, checkpoints, wiring.

:class:`TrainingLoop` is assembled from :class:`LoopParts`; runners (``launch``, ``elastic``, ``parallel``,
``federated``) compose it by passing the parts where their run differs. Nothing here imports them.
"""

from farsync.train.build import build_algorithm, build_reducer, link_for_group
from farsync.train.checkpoint import CheckpointError, find_latest, load_worker_state, prune, save_worker_state
from farsync.train.context import (
    Sink,
    WorkerContext,
    WorkerResult,
    publish_result,
    read_results,
    worker_result,
)
from farsync.train.loop import (
    Evaluator,
    LoopHook,
    LoopParts,
    RecordHook,
    ResultHook,
    StepFunction,
    TrainingLoop,
    evaluate_global,
    plain_step,
    run_training,
    sync_communicator,
    worker_task,
)
from farsync.train.schedule import lr_lambda
from farsync.train.task import MODEL_INIT_LOCK, Task, build_model, build_task, check_task

__all__ = [
    "MODEL_INIT_LOCK",
    "CheckpointError",
    "Evaluator",
    "LoopHook",
    "LoopParts",
    "RecordHook",
    "ResultHook",
    "Sink",
    "StepFunction",
    "Task",
    "TrainingLoop",
    "WorkerContext",
    "WorkerResult",
    "build_algorithm",
    "build_model",
    "build_reducer",
    "build_task",
    "check_task",
    "evaluate_global",
    "find_latest",
    "link_for_group",
    "load_worker_state",
    "lr_lambda",
    "plain_step",
    "prune",
    "publish_result",
    "read_results",
    "run_training",
    "save_worker_state",
    "sync_communicator",
    "worker_result",
    "worker_task",
]
