"""Training with Ray Train: typed job config, the per-worker loop, evaluation and publishing."""
