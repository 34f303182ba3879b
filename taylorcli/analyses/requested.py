"""The analyses a recipe asks for, built for the training loop (the `analyses=` of run.loop.train)."""

from __future__ import annotations

from ..run.analysis import Analysis, RunContext


def requested(context: RunContext) -> list[Analysis]:
    """Children metrics, kernel dynamics and the closed form, each only when the recipe asks.

    Each holds data (a kernel subset, the standardized training set) and compiled functions
    that an ordinary run should not pay for, so nothing is built unless asked for.
    """
    recipe = context.recipe
    out: list[Analysis] = []
    if recipe.spawn.children >= 2:
        from .children import ChildrenMetrics

        out.append(ChildrenMetrics(context))
    if recipe.eval.kernel_n:
        from .kernel_dynamics import KernelDynamics

        out.append(KernelDynamics(context))
    if recipe.eval.closed_form:
        from .closed_form import ClosedFormComparison

        out.append(ClosedFormComparison(context))
    return out
