"""The other servers the benchmark compares against, each one process serving the same SavedModels."""
