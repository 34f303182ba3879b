"""Lee et al. (2019): outputs of the linearized network under MSE gradient flow, in closed form.

Loss L = 1/(2N) Σ ‖f(x) − y‖² and rate η give df/dt = −(η/N) Θ̂0 (f − Y), so after t steps
(gradient descent with small η ≈ flow time t):

    f_t(X) = Y + e^{−ηΘt/N} (f0(X) − Y)
    f_t(x) = f0(x) + Θ(x, X) Θ^{-1} (I − e^{−ηΘt/N}) (Y − f0(X))

Kernels are full-output (row index i·C + c), as `kernels.ntk(..., outputs="full")` returns them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from taylorcli.kernels import ntk

__all__ = ["closed_form_outputs", "closed_form_trajectory"]


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
