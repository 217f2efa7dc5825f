"""Launchers: local processes or threads; ``torchrun`` uses :mod:`farsync.worker` directly."""

from farsync.launch.local import launch, run_threads

__all__ = ["launch", "run_threads"]
