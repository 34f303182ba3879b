"""What a recipe costs before it runs: parameters, and the compiled lockstep step's FLOPs and memory."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .. import data as data_lib
from ..errors import RecipeError
from ..models import abstract_params, build_model, count_params
from .lockstep import build_engine, init_state, make_train_step, steps_per_epoch

MAX_STEPS = 2**31 - 1  # the step counter is an int32 on the device


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


def parameter_count(recipe) -> int:
    """Scalar parameters of the recipe's network (one model)."""
    spec = data_lib.recipe_spec(recipe)
    return count_params(abstract_params(build_model(recipe.model, spec.num_classes),
                                        spec.image_shape))


def step_cost(recipe) -> StepCost:
    """Compile the lockstep step for abstract inputs and read XLA's cost and memory analysis."""
    spec = data_lib.recipe_spec(recipe)
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


def device_memory() -> tuple[int | None, str]:
    """Bytes one device can hold (GPU: its limit; CPU: the machine's memory), and its name."""
    device = jax.local_devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    except (ValueError, OSError, AttributeError):
        return None, "this machine"


def state_size(recipe, spec) -> tuple[int, int, int]:
    """(bytes of a run's whole state, bytes of one model's parameters, its parameter count):
    every model's parameters and optimizer state, θ0, expansion points, from abstract shapes
    (nothing is allocated)."""
    engine = build_engine(recipe, spec)
    state = jax.eval_shape(lambda: init_state(engine, recipe, spec))
    size = lambda tree: sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
    return size(state), size(state["theta0"]), count_params(state["theta0"])


def check_fits(recipe, spec, source: str = "recipe") -> None:
    """Refuse, in one line, a run that cannot survive: too many steps for the step counter, or
    parameters, optimizer states and gradients that cannot fit on a device."""
    spe = steps_per_epoch(recipe, spec.train_size)
    steps = recipe.train.epochs * spe
    if steps > MAX_STEPS:
        raise RecipeError(f"{source}: key train.epochs: {recipe.train.epochs} epochs of {spe} "
                          f"steps are {steps:,} steps; expected at most {MAX_STEPS:,} in one run")
    whole, one, params = state_size(recipe, spec)
    models = len(build_engine(recipe, spec).specs)
    share = len(jax.local_devices()) if recipe.train.split_models else 1
    need = (whole + one * models) / share  # the state, and a gradient per model while it steps
    have, where = device_memory()
    if have is not None and need > have:
        raise RecipeError(f"{source}: the {models} models of {params:,} parameters need at "
                          f"least {need / 2**30:,.1f} GiB for parameters, optimizer states and "
                          f"gradients; {where} has {have / 2**30:,.1f} GiB (make model.width, "
                          f"model.depth or the models fewer, or split the models across "
                          f"devices with train.split_models)")
