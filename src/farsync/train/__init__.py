"""The training loop and what it is built from: context and result, schedule, task, checkpoints, wiring.

Runners (``launch``, ``elastic``, ``parallel``, ``federated``) compose these; nothing here imports them.
"""

from farsync.train.build import build_algorithm, build_reducer, link_for_group
from farsync.train.checkpoint import CheckpointError, find_latest, load_worker_state, prune, save_worker_state
from farsync.train.context import Sink, WorkerContext, WorkerResult, publish_result, read_results
from farsync.train.loop import TrainingLoop, run_training
from farsync.train.schedule import lr_lambda
from farsync.train.task import MODEL_INIT_LOCK, Task, build_model, build_task, check_task

__all__ = [
    "MODEL_INIT_LOCK",
    "CheckpointError",
    "Sink",
    "Task",
    "TrainingLoop",
    "WorkerContext",
    "WorkerResult",
    "build_algorithm",
    "build_model",
    "build_reducer",
    "build_task",
    "check_task",
    "find_latest",
    "link_for_group",
    "load_worker_state",
    "lr_lambda",
    "prune",
    "publish_result",
    "read_results",
    "run_training",
    "save_worker_state",
]
