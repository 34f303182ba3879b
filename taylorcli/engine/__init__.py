"""The jitted lockstep step and where it runs: the step, evaluation, devices, split models,
several processes, and what a step costs (for `--dry-run`)."""
