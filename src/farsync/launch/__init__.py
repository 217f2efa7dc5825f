"""Launchers: local processes or threads; ``torchrun`` runs :mod:`farsync.launch.torchrun`."""

from farsync.launch.local import launch, run_threads

__all__ = ["launch", "run_threads"]
