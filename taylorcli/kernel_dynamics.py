"""Kernel dynamics along a run (Fort et al. 2020): every model's empirical NTK at every evaluation.

The kernels are taken on a fixed subset of `eval.kernel_n` training examples (standardized, not
augmented) and saved in kernels/stepNNNNNNNN.npz; kernels.csv has, per model and evaluation
point, the kernel's norm, its distance from the run's first kernel and from the previous one,
and the kernel velocity (distance from the previous kernel per epoch).
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import data as data_lib
from .kernels import kernel_distance, ntk
from .runs import read_step_arrays, write_step_arrays
from .taylor import taylorize

COLUMNS = ["model", "epoch", "step", "kernel_norm", "distance_from_start",
           "distance_from_previous", "velocity"]


def kernel_subset(train_size: int, n: int, seed: int) -> np.ndarray:
    """Indices of the fixed training examples the kernels are computed on (sorted)."""
    return np.sort(np.random.default_rng(seed).choice(train_size, size=min(n, train_size),
                                                      replace=False))


class KernelDynamics:
    """kernels.csv rows and kernels/*.npz at one evaluation point, for every model."""

    file = "kernels.csv"
    columns = COLUMNS

    def __init__(self, recipe, ds, engine, run_path: Path):
        self.engine = engine
        self.outputs = recipe.eval.kernel_outputs
        self.block = recipe.eval.kernel_block
        self.folder = Path(run_path) / "kernels"
        self.spe = engine.steps_per_epoch
        idx = kernel_subset(len(ds.train_y), recipe.eval.kernel_n, recipe.seed)
        self.x = data_lib.standardize(jnp.asarray(ds.train_x[idx]), mean=ds.mean, std=ds.std)
        self._fns: dict[str, tuple] = {}
        # (step, kernels) of the run's first and of the latest evaluation, once known.
        self._first: tuple | None = None
        self._previous: tuple | None = None

    def model_fn(self, spec, center):
        """One function object per model and expansion point, so its compiled Jacobian is reused."""
        if spec.order == 0:
            return self.engine.apply
        host = jax.device_get(center)
        cached = self._fns.get(spec.name)
        # The step hands back new arrays each time: compare values, not identities.
        if cached is None or not all(np.array_equal(a, b) for a, b in
                                     zip(jax.tree.leaves(cached[0]), jax.tree.leaves(host))):
            cached = (host, taylorize(self.engine.apply, center, spec.order))
            self._fns[spec.name] = cached
        return cached[1]

    def kernels(self, state) -> dict[str, np.ndarray]:
        """Every model's NTK on the subset, wrt its own parameters."""
        out = {}
        centers = state.get("centers", {})
        for spec in self.engine.specs:
            fn = self.model_fn(spec, centers.get(spec.name, state["theta0"]))
            out[spec.name] = ntk(fn, state["params"][spec.name], self.x, outputs=self.outputs,
                                 block=self.block)
        return out

    def saved_steps(self) -> list[int]:
        """Steps whose kernels are on disk, oldest first."""
        if not self.folder.is_dir():
            return []
        found = (re.fullmatch(r"step(\d+)\.npz", p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, step: int) -> dict[str, np.ndarray]:
        """The kernels saved at `step`."""
        return read_step_arrays(self.folder, step)

    def __call__(self, state, step: int, epoch: float, logits: dict) -> list[dict]:
        """One row per model; the kernels are saved beside them."""
        kernels = self.kernels(state)
        first, previous = self._earlier(step)
        write_step_arrays(self.folder, step, kernels)
        self._first = first or (step, kernels)
        self._previous = (step, kernels)
        dt = (step - previous[0]) / self.spe if previous else np.nan
        rows = []
        for name, k in kernels.items():
            gap = _distance(previous[1][name], k) if previous else np.nan
            rows.append({"model": name, "epoch": round(epoch, 6), "step": step,
                         "kernel_norm": float(np.linalg.norm(k)),
                         "distance_from_start": _distance(self._first[1][name], k),
                         "distance_from_previous": gap, "velocity": gap / dt})
        return rows

    def _earlier(self, step: int):
        """(step, kernels) of the run's first and latest evaluations before `step`, or None.

        Held in memory once this process has evaluated; read from disk before that, so a
        resumed run measures against the same kernels.
        """
        if self._previous is not None and self._previous[0] < step:
            return self._first, self._previous
        earlier = [s for s in self.saved_steps() if s < step]
        if not earlier:
            return None, None
        first = (earlier[0], self.load(earlier[0]))
        return first, (first if len(earlier) == 1 else (earlier[-1], self.load(earlier[-1])))


def _distance(k1, k2) -> float:
    # A zero kernel (every ReLU dead) has no direction: its distance is undefined, not an error.
    return kernel_distance(k1, k2) if np.any(k1) and np.any(k2) else float("nan")
