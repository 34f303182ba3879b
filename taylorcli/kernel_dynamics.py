"""Kernel dynamics along a run (Fort et al. 2020): every model's empirical NTK at every evaluation.

The kernels are taken on a fixed subset of `eval.kernel_n` training examples (standardized, not
augmented) and saved in kernels/stepNNNNNNNN.npz; kernels.csv has, per model and evaluation
point, the kernel's norm, its distance from the run's first kernel and from the previous one,
and the kernel velocity (distance from the previous kernel per epoch).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import data as data_lib
from .kernels import kernel_distance, ntk
from .runs import write_atomic
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
        self.n = recipe.eval.kernel_n
        self.outputs = recipe.eval.kernel_outputs
        self.block = recipe.eval.kernel_block
        self.folder = Path(run_path) / "kernels"
        self.spe = engine.steps_per_epoch
        idx = kernel_subset(len(ds.train_y), self.n, recipe.seed)
        self.x = data_lib.standardize(jnp.asarray(ds.train_x[idx]), mean=ds.mean, std=ds.std)
        self._fns: dict[str, tuple] = {}

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
        with np.load(self.folder / f"step{step:08d}.npz") as saved:
            return {k.replace("__", "/"): saved[k] for k in saved.files}

    def __call__(self, state, step: int, epoch: float, logits: dict) -> list[dict]:
        """One row per model; the kernels are saved beside them."""
        kernels = self.kernels(state)
        # Earlier kernels come from disk, so a resumed run measures against the same ones.
        earlier = [s for s in self.saved_steps() if s < step]
        first = self.load(earlier[0]) if earlier else kernels
        previous = self.load(earlier[-1]) if earlier else None
        buf = io.BytesIO()
        np.savez(buf, **{k.replace("/", "__"): v for k, v in kernels.items()})
        write_atomic(self.folder / f"step{step:08d}.npz", buf.getvalue())
        rows = []
        for name, k in kernels.items():
            gap = _distance(previous[name], k) if previous is not None else np.nan
            dt = (step - earlier[-1]) / self.spe if earlier else np.nan
            rows.append({"model": name, "epoch": round(epoch, 6), "step": step,
                         "kernel_norm": float(np.linalg.norm(k)),
                         "distance_from_start": _distance(first[name], k),
                         "distance_from_previous": gap, "velocity": gap / dt if earlier else np.nan})
        return rows


def _distance(k1, k2) -> float:
    # A zero kernel (every ReLU dead) has no direction: its distance is undefined, not an error.
    return kernel_distance(k1, k2) if np.any(k1) and np.any(k2) else float("nan")
