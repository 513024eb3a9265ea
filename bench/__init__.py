"""stocksync benchmarks: `python -m bench`."""
