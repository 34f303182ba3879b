"""Lee et al. (2019): every model of a run against the closed-form linearized MSE trajectory.

With MSE loss and plain gradient descent, the model linearized at the run's expansion point
follows f_t(x) = f0(x) + Θ(x, X) Θ^{-1} (I − e^{−ηΘt/N}) (Y − f0(X)) on the training set X (its
empirical NTK Θ taken once, at the start). Minibatch SGD follows it in expectation, and a
learning-rate schedule enters through the accumulated rate Σ η_s. closed_form.csv compares,
at every evaluation point, each model's test logits with the closed form's.
"""

from __future__ import annotations

import numpy as np

from . import data as data_lib
from .closed_form import closed_form_trajectory
from .metrics import cos_func
from .recipe import RecipeError

COLUMNS = ["model", "epoch", "step", "flow_time", "closed_form_test_acc", "test_acc",
           "closed_form_train_loss", "relative_difference", "cos_closed_form"]
MAX_ROWS = 20_000  # N·C rows of the kernel: an eigendecomposition of at most ~3 GiB in float64


class ClosedFormComparison:
    """closed_form.csv rows at each evaluation point: every model against the closed form."""

    file = "closed_form.csv"
    columns = COLUMNS

    def __init__(self, recipe, ds, engine, evaluator, points: list[int], schedule):
        self.engine = engine
        self.evaluator = evaluator
        self.block = recipe.eval.kernel_block
        self.num_classes = ds.num_classes
        n = len(ds.train_y)
        if n * ds.num_classes > MAX_ROWS:
            raise RecipeError(f"eval.closed_form: the kernel on {n} training examples has "
                              f"{n * ds.num_classes} rows; expected at most {MAX_ROWS} (set "
                              f"data.train_limit to at most {MAX_ROWS // ds.num_classes})")
        self.x = data_lib.standardize(np.asarray(ds.train_x), mean=ds.mean, std=ds.std)
        self.y = np.asarray(ds.train_y)
        start = engine.start_step
        rates = np.array([float(schedule(s)) for s in range(start, max(points) + 1)])
        # Gradient flow time in units of the rate: η t becomes Σ η_s under a schedule.
        self.times = {p: float(rates[: p - start].sum()) for p in points}
        self.curves = None

    def _trajectory(self, state) -> None:
        steps = sorted(self.times)
        test_x = self.evaluator.test_x[: self.evaluator.n]
        f_train, f_test = closed_form_trajectory(
            self.engine.apply, state["theta0"], self.x, self.y, test_x, 1.0,
            [self.times[s] for s in steps], self.num_classes, block=self.block)
        onehot = np.eye(self.num_classes)[self.y]
        losses = 0.5 * np.mean(np.sum((f_train - onehot[None]) ** 2, axis=-1), axis=-1)
        self.curves = {s: (f_test[i], float(losses[i])) for i, s in enumerate(steps)}

    def __call__(self, state, step: int, epoch: float, logits: dict) -> list[dict]:
        """One row per model."""
        if self.curves is None:  # the kernel at the expansion point, once per process
            self._trajectory(state)
        f_cf, loss = self.curves[step]
        labels = np.asarray(self.evaluator.test_y)
        closed_form_acc = float(np.mean(np.argmax(f_cf, -1) == labels))
        rows = []
        for name, f in logits.items():
            f = np.asarray(f, np.float64)
            rows.append({
                "model": name, "epoch": round(epoch, 6), "step": step,
                "flow_time": self.times[step],
                "closed_form_test_acc": closed_form_acc,
                "test_acc": float(np.mean(np.argmax(f, -1) == labels)),
                "closed_form_train_loss": loss,
                "relative_difference": float(np.linalg.norm(f - f_cf) / np.linalg.norm(f_cf)),
                "cos_closed_form": cos_func(f_cf, f),
            })
        return rows
