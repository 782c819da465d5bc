"""Benchmarks: every figure is a ratio against clean TCP measured in the same run."""
