"""Benchmark scripts (not installed with the package; see mvae.benchmark for the reusable parts)."""
