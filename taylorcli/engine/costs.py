"""What a recipe costs before it runs: parameters, and the compiled lockstep step's FLOPs and memory."""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ..errors import RecipeError
from .lockstep import make_train_step
from .setup import Setup

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


def step_cost(setup: Setup) -> StepCost:
    """Compile the lockstep step for abstract inputs and read XLA's cost and memory analysis."""
    spec, engine = setup.spec, setup.engine
    perm = jax.ShapeDtypeStruct((spec.train_size,), jnp.int32)
    train_x = jax.ShapeDtypeStruct((spec.train_size, *spec.image_shape), jnp.uint8)
    train_y = jax.ShapeDtypeStruct((spec.train_size,), jnp.int32)
    step = jax.jit(make_train_step(engine, setup.recipe.seed), donate_argnums=0)
    compiled = step.lower(setup.abstract_state, perm, train_x, train_y).compile()
    mem = compiled.memory_analysis()
    return StepCost(
        params=setup.parameters,
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


def check_fits(setup: Setup, source: str = "recipe") -> None:
    """Refuse, in one line, a run that cannot survive: too many steps for the step counter, or
    parameters, optimizer states and gradients that cannot fit on a device."""
    recipe, spe = setup.recipe, setup.engine.steps_per_epoch
    steps = recipe.train.epochs * spe
    if steps > MAX_STEPS:
        raise RecipeError(f"{source}: key train.epochs: {recipe.train.epochs} epochs of {spe} "
                          f"steps are {steps:,} steps; expected at most {MAX_STEPS:,} in one run")
    whole, one = setup.state_bytes()
    models = len(setup.engine.models)
    share = len(jax.local_devices()) if recipe.train.split_models else 1
    need = (whole + one * models) / share  # the state, and a gradient per model while it steps
    have, where = device_memory()
    if have is not None and need > have:
        raise RecipeError(f"{source}: the {models} models of {setup.parameters:,} parameters "
                          f"need at least {need / 2**30:,.1f} GiB for parameters, optimizer "
                          f"states and gradients; {where} has {have / 2**30:,.1f} GiB (make "
                          f"model.width, model.depth or the models fewer, or split the models "
                          f"across devices with train.split_models)")
