"""Benchmarks: this project's serving path against the servers users would pick instead, and Ray
Train against plain Keras ``fit`` (``make bench``; results in benchmarks/results/)."""
