"""Benchmark scripts (not tests): run from the repository root, e.g. ``python3 -m bench.backend_latency``."""
