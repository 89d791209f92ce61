"""Faults on real processes (issue 15): the harness (network namespaces,
partitions, pauses, kill -9), the workloads, the checkers, and the runner
``python -m tests.chaos``."""
