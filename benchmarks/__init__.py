"""Benchmark scripts (not installed with the package; see mvae.evaluation for the reusable parts)."""
