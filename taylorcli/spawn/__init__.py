"""Spawned runs (Fort et al. 2020): Taylorized models, re-expanding models and children
started from a parent run's network at an epoch, and the sweep over spawn epochs."""
