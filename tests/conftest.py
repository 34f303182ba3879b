"""Shared fixtures: a tiny digits recipe that trains in a second or two on a laptop CPU."""

import copy
import os

import pytest

from taylorcli.recipe import Recipe, recipe_from_dict

# CNN-2-4 on 128 digits (4 steps per epoch), full network plus orders 1 and 2.
TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "digits", "train_limit": 128, "test_limit": 64, "pad": 2, "flip": False},
    "model": {"arch": "cnn", "depth": 2, "width": 4},
    "taylor": {"orders": [1, 2]},
    "train": {"epochs": 2, "batch_size": 32},
    "optim": {"lr": 0.1, "grad_clip": 5.0, "schedule": "constant"},
    "eval": {"every_epochs": 1, "batch_size": 64},
}


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for the session's runs (processes inherit it), kept out
    of the user's own ~/.cache: the many runs of the tiny recipe compile their programs once."""
    folder = tmp_path_factory.mktemp("jax_cache")
    before = os.environ.get("TAYLORCLI_COMPILE_CACHE")
    os.environ["TAYLORCLI_COMPILE_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("TAYLORCLI_COMPILE_CACHE", None)
    else:
        os.environ["TAYLORCLI_COMPILE_CACHE"] = before


@pytest.fixture(scope="session")
def tiny_dict():
    """`tiny_dict()`: a fresh, mutable copy of the tiny recipe as a nested dict."""
    return lambda: copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def tiny_recipe():
    """`tiny_recipe("optim.lr=0.5", ...)`: the tiny recipe with `--set`-style overrides."""

    def make(*overrides: str) -> Recipe:
        return recipe_from_dict(copy.deepcopy(TINY), "tiny", overrides)

    return make


# A real `taylorcli` process that signals itself right after optimizer step `at_step`: the
# stop point is deterministic, not a race between a test's timer and the run's speed.
_SIGNAL_DRIVER = """
import os, sys
import taylorcli.run.progress as progress
AT, SIG = int(sys.argv[1]), int(sys.argv[2])


class SignalAt(progress.PlainProgress):
    def step(self, step, latest):
        super().step(step, latest)
        if step == AT:
            os.kill(os.getpid(), SIG)


progress.make_progress = lambda console=None: SignalAt()
from taylorcli import cli
sys.argv = ["taylorcli", *sys.argv[3:]]
cli.run()
"""


def run_signalled(args, at_step: int, sig: int, timeout: float = 300):
    """Run `taylorcli ARGS` in a new process that sends itself `sig` after step `at_step`."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _SIGNAL_DRIVER, str(at_step), str(int(sig)),
                           *map(str, args)], capture_output=True, text=True, timeout=timeout)
