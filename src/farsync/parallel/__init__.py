"""Pipelined DiLoCo replicas (DiLoCoX's dual optimizer policy): the replicas x stages grid, the GPipe and
1F1B schedules inside a replica, the stage worker and its per-stage report.

A run becomes pipelined with ``parallel.num_stages > 1``; ``num_workers`` is then R replicas x S stages::

    farsync train --set num_workers=4 --set parallel.num_stages=2 --set parallel.num_microbatches=2 \
        --set parallel.schedule=1f1b --set network.bandwidth=100Mbit --set network.intra_bandwidth=10Gbit

``summary.json`` then also carries ``bytes_sent_per_stage`` (slow link), ``activation_bytes_per_worker``
(fast link) and ``stages`` (memory each stage process holds); :func:`pipeline_report` reads them back.
"""

from __future__ import annotations

from farsync.parallel.mesh import Mesh, MeshGroups, build_mesh_groups, intra_link
from farsync.parallel.pipeline import PipelineRunner, schedule_actions
from farsync.report.pipeline import pipeline_report, pipeline_summary, stage_memory

__all__ = [
    "Mesh",
    "MeshGroups",
    "PipelineRunner",
    "build_mesh_groups",
    "intra_link",
    "pipeline_report",
    "pipeline_summary",
    "schedule_actions",
    "stage_memory",
]
