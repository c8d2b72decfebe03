"""Helpers shared by tests and benchmarks: real tools as oracles, generated images."""
