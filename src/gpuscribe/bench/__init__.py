"""Benchmarks of gpuscribe's own code paths (no GPU needed)."""
