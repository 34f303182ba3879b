"""When a run evaluates and when it checkpoints, in optimizer steps."""

from __future__ import annotations

from ..engine.lockstep import spawn_step
from ..recipe import Recipe


def evaluation_steps(recipe: Recipe, steps_per_epoch: int) -> list[int]:
    """Steps at which every model is evaluated: the start, every `eval.every_epochs`, `eval.steps`, the end.

    A spawned run starts at its spawn step and evaluates there and at the parent's later points.
    """
    total = recipe.train.epochs * steps_per_epoch
    every = recipe.eval.every_epochs
    first = spawn_step(recipe, steps_per_epoch)
    points = {first, total}
    points |= {e * steps_per_epoch for e in range(every, recipe.train.epochs + 1, every)}
    points |= {s for s in recipe.eval.steps if s < total}
    return sorted(p for p in points if p >= first)


def checkpoint_steps(recipe: Recipe, steps_per_epoch: int):
    """Whether the state is checkpointed after a step: the intervals, the kept epochs, the end.

    A predicate, not a set: a run of a billion steps checkpointed every few steps must not
    hold every checkpoint step in memory.
    """
    total = recipe.train.epochs * steps_per_epoch
    c = recipe.checkpoint
    kept = {e * steps_per_epoch for e in c.keep_epochs}
    first = spawn_step(recipe, steps_per_epoch)
    epoch_steps = c.every_epochs * steps_per_epoch

    def due(step: int) -> bool:
        if step < first:
            return False
        return (step == total or step in kept or (0 < step and step % epoch_steps == 0)
                or bool(c.every_steps and 0 < step and step % c.every_steps == 0))

    return due


