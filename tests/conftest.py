"""Shared fixtures: a tiny digits recipe that trains in a second or two on a laptop CPU."""

import copy

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
