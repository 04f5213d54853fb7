"""Throughput benchmarks (``python -m kajax.benchmarks.<name> --help``)."""
