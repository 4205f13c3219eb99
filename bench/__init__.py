"""Reproducible benchmarks (``make bench`` → docs/benchmarks.md). See bench/run.py."""
