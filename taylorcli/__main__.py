"""`python -m taylorcli`: the same as the `taylorcli` command."""

from .cli import run

run()
