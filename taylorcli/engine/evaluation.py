"""Evaluation points: every model's test metrics, agreement with the full network, layer movement."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import data as data_lib
from ..metrics import cos_func, cos_param, func_dist, layer_movement, layer_paths, \
    loss_and_accuracy, param_dist
from ..names import FULL, order_of
from .lockstep import make_eval_logits


def mean_stats(sums: dict) -> dict[str, tuple[float, float]]:
    """Mean minibatch loss and accuracy since the last evaluation point (NaN before any step)."""
    out = {}
    for name, (loss, accuracy, count) in sums.items():
        out[name] = ((float(loss / count), float(accuracy / count)) if count
                     else (math.nan, math.nan))
    return out


class Evaluator:
    """Test logits, losses, accuracies, cos_param, cos_func and layer movement of every model."""

    def __init__(self, engine, ds: data_lib.Dataset, eval_batch: int, state):
        self.engine = engine
        self.batch = min(eval_batch, len(ds.test_y))
        n = len(ds.test_y)
        padded = math.ceil(n / self.batch) * self.batch
        # Standardized on the host and sent once: eager device operations would each compile
        # a small program at start-up.
        x = data_lib.standardize(ds.test_x, mean=ds.mean, std=ds.std, xp=np)
        # Pad to whole batches so one compiled function serves the whole test set.
        self.test_x = jnp.asarray(np.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1)))
        self.test_y = jnp.asarray(ds.test_y)
        self.n = n
        self.logits_fn = jax.jit(make_eval_logits(engine))
        self.layers = list(engine.layers) or layer_paths(state.theta0)
        self.geometry = jax.jit(self._geometry)
        self.scores = jax.jit(self._scores)

    def _scores(self, logits: dict, y):
        """Each model's test loss and accuracy, in one program."""
        return {name: loss_and_accuracy(z, y, self.engine.loss) for name, z in logits.items()}

    def _geometry(self, state):
        # A subset run without the full network leaves the cosines to `report` (report/merge.py).
        full = state.params.get(FULL)
        out = {}
        for name, params in state.params.items():
            dist, rel = layer_movement(params, state.theta0, self.layers)
            cp = jnp.nan if full is None else cos_param(full, params, state.theta0)
            pd = jnp.nan if full is None else param_dist(params, full)
            out[name] = (cp, dist, rel, pd)
        return out

    def logits(self, state) -> dict[str, np.ndarray]:
        """Test-set logits of every model."""
        parts = [self.logits_fn(state, self.test_x[i:i + self.batch])
                 for i in range(0, self.test_x.shape[0], self.batch)]
        return {n: np.concatenate([np.asarray(p[n]) for p in parts])[: self.n]
                for n in self.engine.names}

    def __call__(self, state, step: int, epoch: float, lr: float):
        """Metrics rows, layer rows and logits at one evaluation point."""
        logits = self.logits(state)
        scores = jax.device_get(self.scores(logits, self.test_y))
        geometry = jax.device_get(self.geometry(state))
        diverged = jax.device_get(state.diverged)
        train_stats = mean_stats(jax.device_get(state.stats))
        rows, layer_rows = [], []
        for name in self.engine.names:
            test_loss, test_acc = (float(v) for v in scores[name])
            cp, dist, rel, pd = geometry[name]
            train_loss, train_acc = train_stats[name]
            rows.append({
                "model": name, "order": order_of(name), "epoch": round(epoch, 6), "step": step,
                "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                "test_loss": test_loss, "test_acc": test_acc,
                "cos_param": float(cp) if name != FULL or step == self.engine.start_step else 1.0,
                "cos_func": cos_func(logits[FULL], logits[name]) if FULL in logits else math.nan,
                # Finite parameters can still give non-finite logits: that is divergence too.
                "diverged": bool(diverged[name]) or not math.isfinite(test_loss),
                "func_dist": func_dist(logits[FULL], logits[name]) if FULL in logits else math.nan,
                "wall_time": math.nan,  # the loop's clock fills it in
                "param_dist": float(pd),
            })
            layer_rows += [{"model": name, "epoch": round(epoch, 6), "layer": layer,
                            "distance": float(d), "relative_distance": float(r)}
                           for layer, d, r in zip(self.layers, dist, rel)]
        return rows, layer_rows, logits
