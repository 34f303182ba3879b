"""Lee et al. (2019): outputs of the linearized network under MSE gradient flow, in closed form.

Loss L = 1/(2N) Σ ‖f(x) − y‖² and rate η give df/dt = −(η/N) Θ̂0 (f − Y), so after t steps
(gradient descent with small η ≈ flow time t):

    f_t(X) = Y + e^{−ηΘt/N} (f0(X) − Y)
    f_t(x) = f0(x) + Θ(x, X) Θ^{-1} (I − e^{−ηΘt/N}) (Y − f0(X))

Kernels are full-output (row index i·C + c), as `kernels.ntk(..., outputs="full")` returns them.

The analysis (`eval.closed_form: true`): with MSE loss and plain gradient descent the model
linearized at the run's expansion point follows the closed form on the training set X (its
empirical NTK Θ taken once, at the start). Minibatch SGD follows it in expectation, and a
learning-rate schedule enters through the accumulated rate Σ η_s. closed_form.csv compares,
at every evaluation point, each model's test logits with the closed form's.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import data as data_lib
from ..errors import RecipeError
from ..metrics import cos_func
from ..run.analysis import Point, RunContext
from .ntk import ntk

__all__ = ["closed_form_outputs", "closed_form_trajectory", "ClosedFormComparison"]


def closed_form_outputs(theta, theta_test, f0_train, f0_test, y_train, lr: float,
                        times: Sequence[float]) -> tuple[np.ndarray, np.ndarray | None]:
    """f_t(X) (T, N, C) and f_t(x_test) (T, M, C) for every t in `times`, from one eigendecomposition."""
    f0_train = np.asarray(f0_train, np.float64)
    y = np.asarray(y_train, np.float64)
    n, c = f0_train.shape
    if y.shape != (n, c):
        raise ValueError(f"y_train must be one-hot of shape {(n, c)}, got {y.shape}")
    theta = np.asarray(theta, np.float64)
    if theta.shape != (n * c, n * c):
        raise ValueError(f"theta must be ({n * c}, {n * c}), got {theta.shape}")
    t = np.asarray(times, np.float64).reshape(-1)
    if np.any(t < 0):
        raise ValueError("times must be >= 0")

    # The kernel is a Gram matrix: asymmetry and negative eigenvalues are rounding only, and so
    # are eigenvalues under numpy's rank tolerance; they count as zero.
    lam, v = np.linalg.eigh((theta + theta.T) / 2)
    tol = max(lam.max(initial=0.0), 0.0) * lam.size * np.finfo(np.float64).eps
    lam = np.where(lam > tol, lam, 0.0)
    rate = lr / n
    positive = lam > 0
    with np.errstate(invalid="ignore"):  # ∞·0 (zero eigenvalue at t = ∞) is discarded by the where
        exponent = np.where(positive, rate * np.outer(t, lam), 0.0)  # (T, N·C)
    decay = np.exp(-exponent)
    # (1 − e^{−rate·λt})/λ, whose limit at λ = 0 is rate·t; expm1 keeps small λ accurate.
    # At t = ∞ a zero eigenvalue's direction is dropped (pseudo-inverse): exactly, Θ(x, X)
    # annihilates Θ's null space, so any finite weight there gives the same outputs.
    at_zero = np.where(np.isinf(t), 0.0, rate * t)[:, None]
    gain = np.where(positive, -np.expm1(-exponent) / np.where(positive, lam, 1.0), at_zero)

    residual = v.T @ (f0_train - y).reshape(-1)  # f0(X) − Y in Θ's eigenbasis
    f_train = y[None] + ((decay * residual) @ v.T).reshape(len(t), n, c)
    if theta_test is None:
        return f_train, None
    f0_test = np.asarray(f0_test, np.float64)
    m = f0_test.shape[0]
    theta_test = np.asarray(theta_test, np.float64)
    if theta_test.shape != (m * c, n * c):
        raise ValueError(f"theta_test must be ({m * c}, {n * c}), got {theta_test.shape}")
    f_test = f0_test[None] - ((gain * residual) @ (theta_test @ v).T).reshape(len(t), m, c)
    return f_train, f_test


def closed_form_trajectory(f: Callable, params0: Any, x_train, y_train, x_test, lr: float,
                           steps: Sequence[float], num_classes: int, *, block: int = 16
                           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Closed-form f_t(x_train), f_t(x_test) of f's linearization at params0; labels integer or one-hot."""
    y = np.asarray(y_train)
    if y.ndim == 1:
        y = np.eye(num_classes)[y]
    theta = ntk(f, params0, x_train, outputs="full", block=block)
    f0_train = _outputs(f, params0, x_train, block)
    theta_test = f0_test = None
    if x_test is not None:
        theta_test = ntk(f, params0, x_test, x_train, outputs="full", block=block)
        f0_test = _outputs(f, params0, x_test, block)
    return closed_form_outputs(theta, theta_test, f0_train, f0_test, y, lr, steps)


def _outputs(f, params, x, block: int) -> np.ndarray:
    """f(params, x) evaluated a few blocks at a time, so large sets fit in memory."""
    chunk = 16 * block
    apply = jax.jit(f)
    return np.concatenate([np.asarray(apply(params, jnp.asarray(x[s:s + chunk])))
                           for s in range(0, len(x), chunk)])


# ---- the analysis: every model of a run against the closed form ----

COLUMNS = ["model", "epoch", "step", "flow_time", "closed_form_test_acc", "test_acc",
           "closed_form_train_loss", "relative_difference", "cos_closed_form"]
MAX_ROWS = 20_000  # N·C rows of the kernel: an eigendecomposition of at most ~3 GiB in float64


class ClosedFormComparison:
    """closed_form.csv rows at each evaluation point: every model against the closed form."""

    file = "closed_form.csv"
    columns = COLUMNS

    def __init__(self, context: RunContext):
        recipe, ds, engine = context.recipe, context.ds, context.engine
        points, schedule = context.points, context.schedule
        self.engine = engine
        self.evaluator = context.evaluator
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
            self.engine.apply, state.theta0, self.x, self.y, test_x, 1.0,
            [self.times[s] for s in steps], self.num_classes, block=self.block)
        onehot = np.eye(self.num_classes)[self.y]
        losses = 0.5 * np.mean(np.sum((f_train - onehot[None]) ** 2, axis=-1), axis=-1)
        self.curves = {s: (f_test[i], float(losses[i])) for i, s in enumerate(steps)}

    def __call__(self, state, point: Point) -> list[dict]:
        """One row per model."""
        step, epoch, logits = point.step, point.epoch, point.logits
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
