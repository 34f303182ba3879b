"""Kernel dynamics along a run (Fort et al. 2020): every model's empirical NTK at every evaluation.

The kernels are taken on a fixed subset of `eval.kernel_n` training examples (standardized, not
augmented) and saved in kernels/stepNNNNNNNN.npz; kernels.csv has, per model and evaluation
point, the kernel's norm, its distance from the run's first kernel and from the previous one,
the kernel velocity (distance from the previous kernel per epoch), and the relative change
from the first kernel, ‖K_t − K_0‖_F / ‖K_0‖_F.

The distance (Fort et al.'s S = 1 − <K1, K2> / (‖K1‖ ‖K2‖)) is blind to scale: a kernel that
shrinks by 16% along its own direction is at distance 0. The relative change sees both its
direction and its scale, so a kernel that looks frozen by the distance but is not shows here
(issue 21). Runs written before the column was added read as before (no relative change).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import data as data_lib
from ..run.analysis import Point, RunContext
from ..taylor import taylorize
from .ntk import kernel_distance, ntk

COLUMNS = ["model", "epoch", "step", "kernel_norm", "distance_from_start",
           "distance_from_previous", "velocity", "relative_change"]


def kernel_subset(train_size: int, n: int, seed: int) -> np.ndarray:
    """Indices of the fixed training examples the kernels are computed on (sorted)."""
    return np.sort(np.random.default_rng(seed).choice(train_size, size=min(n, train_size),
                                                      replace=False))


class KernelDynamics:
    """kernels.csv rows and kernels/*.npz at one evaluation point, for every model."""

    file = "kernels.csv"
    columns = COLUMNS

    def __init__(self, context: RunContext):
        recipe, ds, engine = context.recipe, context.ds, context.engine
        self.engine = engine
        self.outputs = recipe.eval.kernel_outputs
        self.block = recipe.eval.kernel_block
        self.run = context.run
        self.spe = engine.steps_per_epoch
        idx = kernel_subset(len(ds.train_y), recipe.eval.kernel_n, recipe.seed)
        self.x = data_lib.standardize(jnp.asarray(ds.train_x[idx]), mean=ds.mean, std=ds.std)
        self._fns: dict[int, object] = {}
        # (step, kernels) of the run's first and of the latest evaluation, once known.
        self._first: tuple | None = None
        self._previous: tuple | None = None

    def model_fn(self, order: int):
        """`f(params, x, center)` of the order-k model: one function object per order, so its
        compiled Jacobian serves every expansion point (re-expansions, spawns) as an argument."""
        if order not in self._fns:
            apply = self.engine.apply
            self._fns[order] = lambda p, x, c, k=order: taylorize(apply, c, k)(p, x)
        return self._fns[order]

    def kernels(self, state) -> dict[str, np.ndarray]:
        """Every model's NTK on the subset, wrt its own parameters."""
        out = {}
        for spec in self.engine.models:
            params = state.params[spec.name]
            if spec.order == 0:
                out[spec.name] = ntk(self.engine.apply, params, self.x, outputs=self.outputs,
                                     block=self.block)
            else:
                center = state.center(spec.name)
                out[spec.name] = ntk(self.model_fn(spec.order), params, self.x,
                                     outputs=self.outputs, block=self.block, args=(center,))
        return out

    def __call__(self, state, point: Point) -> list[dict]:
        """One row per model; the kernels are saved beside them (kernels/stepNNNNNNNN.npz)."""
        step, epoch = point.step, point.epoch
        kernels = self.kernels(state)
        first, previous = self._earlier(step)
        self.run.write_step_arrays("kernels", step, kernels)
        self._first = first or (step, kernels)
        self._previous = (step, kernels)
        dt = (step - previous[0]) / self.spe if previous else np.nan
        rows = []
        for name, k in kernels.items():
            gap = _distance(previous[1][name], k) if previous else np.nan
            rows.append({"model": name, "epoch": round(epoch, 6), "step": step,
                         "kernel_norm": float(np.linalg.norm(k)),
                         "distance_from_start": _distance(self._first[1][name], k),
                         "distance_from_previous": gap, "velocity": gap / dt,
                         "relative_change": relative_change(self._first[1][name], k)})
        return rows

    def _earlier(self, step: int):
        """(step, kernels) of the run's first and latest evaluations before `step`, or None.

        Held in memory once this process has evaluated; read from disk before that, so a
        resumed run measures against the same kernels.
        """
        if self._previous is not None and self._previous[0] < step:
            return self._first, self._previous
        earlier = [s for s in self.run.saved_steps("kernels") if s < step]
        if not earlier:
            return None, None
        load = lambda s: (s, self.run.read_step_arrays("kernels", s))
        first = load(earlier[0])
        return first, (first if len(earlier) == 1 else load(earlier[-1]))


def _distance(k1, k2) -> float:
    # A zero kernel (every ReLU dead) has no direction: its distance is undefined, not an error.
    return kernel_distance(k1, k2) if np.any(k1) and np.any(k2) else float("nan")


def relative_change(k0, k) -> float:
    """‖K − K0‖_F / ‖K0‖_F: how far a kernel moved from K0, in K0's own scale (NaN for K0 = 0)."""
    k0, k = np.asarray(k0, np.float64), np.asarray(k, np.float64)
    norm = np.linalg.norm(k0)
    return float(np.linalg.norm(k - k0) / norm) if norm > 0 else float("nan")
