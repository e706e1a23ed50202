"""Benchmarks: each prints its figures beside the limit they are measured against."""
