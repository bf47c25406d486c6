"""Benchmarks: one process, interleaved rounds, medians, ratios to a bare ``await op()``."""
