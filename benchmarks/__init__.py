"""Benchmarks that run this orchestrator and its peers in the same process run."""
