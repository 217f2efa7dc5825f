"""Pipelined DiLoCo replicas (DiLoCoX's dual optimizer policy): the replicas x stages grid, the GPipe and
1F1B schedules inside a replica, the stage worker and its per-stage report."""

from __future__ import annotations

from farsync.parallel.mesh import Mesh, MeshGroups, build_mesh_groups, intra_link
from farsync.parallel.pipeline import PipelineRunner, schedule_actions
from farsync.parallel.report import pipeline_report, pipeline_summary, stage_memory

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
