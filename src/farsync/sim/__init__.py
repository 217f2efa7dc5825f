"""Simulation for tests and benchmarks: Byzantine attacks, the attacking reducer, fault injection and a
thread-per-rank launcher.

Runners compose these in (``launch`` adds the attacking reducer when ``byzantine.workers`` is set); the core
(train, algorithms, reducers, collectives, comm) never imports this package.
"""
