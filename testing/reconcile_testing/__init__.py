"""Deterministic generators of miniature upstream files, shared by tests, the demo and benchmarks."""
