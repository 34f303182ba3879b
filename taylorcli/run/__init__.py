"""A run on disk: the run directory (written and read here), checkpoints, the training loop
with resume and signals, and its progress display."""
