"""What a command can end with besides success, each mapped by the CLI to one line and an exit code.

`InputError` and its subclasses are bad input (exit 2): str(e) is one line naming the file,
key, flag or variable and what is allowed. `Stopped` (exit 75) and `FullDiverged` (exit 3) are
the two documented ends of a training run other than success. This module imports nothing, so
the command line can catch these without loading JAX.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; str(e) is ONE line naming what was wrong and what is allowed."""

    def __init__(self, message: str):
        # Printed as a single CLI error line, so never let a newline through.
        super().__init__(" ".join(str(message).split()))


class OwnershipError(InputError):
    """A path taylorcli may not write or delete: not its own, a link, a device, in use."""


class RecipeError(InputError):
    """A bad recipe, key, value or `--set` override."""


class DataError(InputError):
    """Missing or unusable data: what was looked for and how to provide it."""


class RunDirError(InputError):
    """A run directory that cannot be used, read or written."""


class CheckpointError(InputError):
    """A checkpoint that is missing, damaged or cannot be read."""


class DistributedError(InputError):
    """A multi-process setting that cannot work (names the environment variable)."""


class ReportError(InputError):
    """Bad input to `compare` or `report` (a path, a flag, an unreadable table)."""


class ModelError(InputError):
    """A user's model that taylorcli cannot build, expand or train (import path, state)."""


class Stopped(Exception):
    """SIGTERM/SIGUSR1 arrived; the run checkpointed at `step` and can be continued."""

    def __init__(self, step: int | None, message: str | None = None):
        super().__init__(message or f"signal received, checkpoint saved at step {step}; rerun "
                                    f"the same command to continue")
        self.step = step


class FullDiverged(Exception):
    """The full network's loss or parameters became non-finite: the run cannot go on."""


class PaperError(InputError):
    """Bad input to `taylorcli paper`: an unknown paper, a bad manifest, flag, data path or --out."""
