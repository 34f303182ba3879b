"""Everything that depends on the recipe, built once per run: the dataset's spec, the network
(inspected once), the lockstep engine, and the shapes of its state.

The training loop, the analyses, the dry run and the cost checks all take this one object, so
the model is built and traced once per run, not once per consumer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jax

from ..data import Dataset, DatasetSpec, recipe_spec, spec_of
from ..models import Network, build_network, count_params, inspect
from ..recipe import Recipe
from .lockstep import Engine, build_engine, fresh_state, initial_params
from .state import LockstepState


@dataclass(frozen=True)
class Setup:
    """A recipe made concrete: its data (or only its shapes), network and engine."""

    recipe: Recipe
    spec: DatasetSpec
    network: Network
    engine: Engine
    data: Dataset | None = field(default=None, compare=False)
    model: Any = field(default=None, compare=False)  # the caller's own network object, if any

    @cached_property
    def abstract_state(self) -> LockstepState:
        """The shapes and dtypes of the run's state (nothing allocated)."""
        return jax.eval_shape(self.initial_state)

    def initial_state(self) -> LockstepState:
        """Step 0: every model at θ0 from the recipe's seed."""
        theta0 = initial_params(self.network, self.recipe.seed, self.spec.image_shape)
        return fresh_state(self.engine, theta0)

    @property
    def parameters(self) -> int:
        """Scalar parameters of one model."""
        return count_params(self.abstract_state.theta0)

    def with_recipe(self, recipe: Recipe) -> "Setup":
        """The same network and data under a recipe that differs in how it trains (an optimizer
        setting, the models, the epochs): only the engine is built again."""
        engine = build_engine(recipe, self.spec, self.network, self.engine.layers)
        return dataclasses.replace(self, recipe=recipe, engine=engine)

    def state_bytes(self) -> tuple[int, int]:
        """(bytes of the whole state, bytes of one model's parameters), from abstract shapes."""
        size = lambda tree: sum(math.prod(x.shape) * x.dtype.itemsize
                                for x in jax.tree.leaves(tree))
        return size(self.abstract_state), size(self.abstract_state.theta0)


def build_setup(recipe: Recipe, data: Dataset | None = None, model: Any = None) -> Setup:
    """The run's setup: from the loaded data when given, else from the dataset's shapes alone
    (a dry run, a plan); `model` is the caller's own network object (`taylorcli.train`)."""
    spec = spec_of(data) if data is not None else recipe_spec(recipe)
    network = build_network(recipe.model, spec.num_classes, model, recipe.seed)
    layers = inspect(network, spec.image_shape, spec.num_classes)
    engine = build_engine(recipe, spec, network, layers)
    return Setup(recipe, spec, network, engine, data, model)
