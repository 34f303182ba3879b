"""What a recipe costs before it runs: parameters, and the compiled lockstep step's FLOPs and memory."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from . import data as data_lib
from .models import abstract_params, build_model, count_params
from .train import build_engine, init_state, make_train_step


@dataclass(frozen=True)
class StepCost:
    """XLA's own figures for one compiled lockstep step."""

    params: int
    flops: float
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    backend: str

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, less what donation lets outputs reuse."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


def compiled_flops(compiled) -> float:
    """XLA's FLOP count of a compiled function."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returned one dict per device
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def recipe_spec(recipe) -> data_lib.DatasetSpec:
    """The dataset's shapes, without loading it (train/test limits applied)."""
    d = recipe.data
    spec = data_lib.dataset_spec(d.dataset, synthetic_train=d.synthetic_train,
                                 synthetic_test=d.synthetic_test)
    train = min(spec.train_size, d.train_limit or spec.train_size)
    test = min(spec.test_size, d.test_limit or spec.test_size)
    return data_lib.DatasetSpec(spec.name, spec.image_shape, spec.num_classes, train, test,
                                spec.mean, spec.std)


def parameter_count(recipe) -> int:
    """Scalar parameters of the recipe's network (one model)."""
    spec = recipe_spec(recipe)
    return count_params(abstract_params(build_model(recipe.model, spec.num_classes),
                                        spec.image_shape))


def step_cost(recipe) -> StepCost:
    """Compile the lockstep step for abstract inputs and read XLA's cost and memory analysis."""
    spec = recipe_spec(recipe)
    engine = build_engine(recipe, spec)
    state = jax.eval_shape(lambda: init_state(engine, recipe, spec))
    perm = jax.ShapeDtypeStruct((spec.train_size,), jnp.int32)
    train_x = jax.ShapeDtypeStruct((spec.train_size, *spec.image_shape), jnp.uint8)
    train_y = jax.ShapeDtypeStruct((spec.train_size,), jnp.int32)
    step = jax.jit(make_train_step(engine, recipe.seed), donate_argnums=0)
    compiled = step.lower(state, perm, train_x, train_y).compile()
    mem = compiled.memory_analysis()
    return StepCost(
        params=count_params(state["theta0"]),
        flops=compiled_flops(compiled),
        argument_bytes=int(getattr(mem, "argument_size_in_bytes", 0)),
        output_bytes=int(getattr(mem, "output_size_in_bytes", 0)),
        temp_bytes=int(getattr(mem, "temp_size_in_bytes", 0)),
        alias_bytes=int(getattr(mem, "alias_size_in_bytes", 0)),
        backend=jax.default_backend(),
    )
