"""Optional measurements during a run, behind the small interface the training loop calls:
kernel dynamics, Lee et al.'s closed form, and the children of a spawned run."""
