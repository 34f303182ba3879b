"""Agreement between the full network and its Taylorized models (Bai et al. 2020, Section 5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _unit(x) -> jax.Array:
    # Divide by the largest entry first: squares of large but finite float32 values overflow.
    return x / jnp.max(jnp.abs(x))


def safe_norm(x) -> jax.Array:
    """Euclidean norm without overflow for large finite entries (0 for a zero vector)."""
    scale = jnp.max(jnp.abs(x))
    safe = jnp.where(scale > 0, scale, 1.0)
    return scale * jnp.sqrt(jnp.sum((x / safe) ** 2))


def cos_param(params_a, params_b, params0) -> jax.Array:
    """Cosine between the two models' displacements θ − θ0, over all parameters (NaN at θ0)."""
    da = _unit(_flat(params_a) - _flat(params0))
    db = _unit(_flat(params_b) - _flat(params0))
    return jnp.dot(da, db) / (jnp.linalg.norm(da) * jnp.linalg.norm(db))


def param_dist(params_a, params_b) -> jax.Array:
    """‖θ_a − θ_b‖, the Euclidean distance between two models' parameters (Theorem 1's weights)."""
    return safe_norm(_flat(params_a) - _flat(params_b))


def cos_func(logits_a, logits_b) -> float:
    """Cosine of two models' test logits, each example centred over classes, all flattened."""
    a = np.asarray(logits_a, np.float64)
    b = np.asarray(logits_b, np.float64)
    with np.errstate(all="ignore"):  # a diverged model's logits give NaN here, by design
        a = (a - a.mean(axis=-1, keepdims=True)).ravel()
        b = (b - b.mean(axis=-1, keepdims=True)).ravel()
    return cosine(a, b)


def func_dist(logits_a, logits_b) -> float:
    """Root mean square of the difference of two models' test logits, over examples and classes."""
    a = np.asarray(logits_a, np.float64)
    b = np.asarray(logits_b, np.float64)
    with np.errstate(all="ignore"):  # a diverged model gives NaN, by design
        return float(np.sqrt(np.mean((a - b) ** 2)))


def cosine(a, b) -> float:
    """Cosine of two vectors in float64; NaN (not a warning) for a zero or non-finite one."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(all="ignore"):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def layer_paths(params) -> list[str]:
    """The layers of a network, input to output: its top-level modules in the order they own
    parameters (a flax `init` lists them in call order; pytree flattening would sort them)."""
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        return [str(k) for k in params]
    return [""]  # parameters not grouped by module: one layer


def layer_movement(params, params0, layers: list[str] | None = None) -> tuple[jax.Array, jax.Array]:
    """Per layer ‖θ_ℓ − θ_ℓ(0)‖_F and that distance over ‖θ_ℓ(0)‖_F, in the order of `layers`
    (default: `layer_paths(params0)`)."""
    layers = layer_paths(params0) if layers is None else layers
    moved: dict[str, list] = {name: [] for name in layers}
    start: dict[str, list] = {name: [] for name in layers}
    flat0 = dict(_by_path(params0))
    for path, leaf in _by_path(params):
        layer = path.split("/", 1)[0] if layers != [""] else ""
        moved[layer].append(jnp.ravel(leaf - flat0[path]))
        start[layer].append(jnp.ravel(flat0[path]))
    dist = jnp.stack([safe_norm(jnp.concatenate(moved[n])) for n in layers])
    norm = jnp.stack([safe_norm(jnp.concatenate(start[n])) for n in layers])
    return dist, dist / norm


def _by_path(tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        yield "/".join(str(getattr(k, "key", k)) for k in path), leaf


def loss_and_accuracy(logits, labels, loss_fn) -> tuple[jax.Array, jax.Array]:
    """Mean loss and accuracy of logits against integer labels (jittable)."""
    logits = jnp.asarray(logits)
    return loss_fn(logits, labels), jnp.mean(jnp.argmax(logits, -1) == labels)


def disagreement(logits_a, logits_b) -> float:
    """Fraction of examples whose predicted labels differ."""
    return float(np.mean(np.argmax(logits_a, -1) != np.argmax(logits_b, -1)))


def function_distance(logits_a, logits_b, labels, num_classes: int) -> float:
    """Fort et al.'s normalized disagreement: disagreement over that of independent classifiers.

    Two independent classifiers with error rates E1, E2 over C classes disagree on a fraction
    1 − (1−E1)(1−E2) − E1·E2/(C−1) of the examples.
    """
    e1 = float(np.mean(np.argmax(logits_a, -1) != labels))
    e2 = float(np.mean(np.argmax(logits_b, -1) != labels))
    expected = 1 - (1 - e1) * (1 - e2) - e1 * e2 / (num_classes - 1)
    return disagreement(logits_a, logits_b) / expected if expected > 0 else float("nan")


def error_barrier(errors) -> float:
    """max over α of err(α θ1 + (1−α) θ2) − (α err(θ1) + (1−α) err(θ2)), errors on a uniform α grid.

    `errors[0]` is at α = 0 (θ2) and `errors[-1]` at α = 1 (θ1).
    """
    errors = np.asarray(errors, np.float64)
    alphas = np.linspace(0.0, 1.0, len(errors))
    line = alphas * errors[-1] + (1 - alphas) * errors[0]
    return float(np.max(errors - line))


def fit_slope(x, y) -> float:
    """The slope of the least-squares line through (log x, log y): y ≈ c·x^slope."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = (x > 0) & (y > 0) & np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def trajectory_projection(reference, trajectories: dict) -> tuple[dict, np.ndarray]:
    """Every trajectory (points × features) in the 2-D principal plane of `reference`'s.

    The plane is fitted on the reference's points alone (centred on their mean); every other
    trajectory is centred on that same mean and projected. Returns the 2-D coordinates of
    each trajectory and the variance ratio the two components explain on the reference.
    """
    ref = np.asarray(reference, np.float64)
    mean = ref.mean(axis=0)
    _, sv, vt = np.linalg.svd(ref - mean, full_matrices=False)
    axes = vt[:2]
    # SVD's signs are arbitrary: fix them so the reference ends at positive coordinates.
    end = (ref[-1] - mean) @ axes.T
    axes = axes * np.where(end < 0, -1.0, 1.0)[:, None]
    coords = {k: (np.asarray(t, np.float64) - mean) @ axes.T for k, t in trajectories.items()}
    explained = (sv[:2] ** 2) / max(float(np.sum(sv ** 2)), 1e-300)
    return coords, explained


def loss_curve_verdict(losses, initial: float | None = None, windows: int = 10,
                       tolerance: float = 0.05, chance: float | None = None,
                       clear_by: float = 0.5, clear_drop: float = 0.25) -> dict:
    """Whether a training-loss curve decreases smoothly and leaves chance early: the test of a
    learning rate.

    `losses` are the minibatch losses of consecutive steps; `initial` the loss at the
    initialization (default: the first step's, which is taken there). The curve is cut into
    `windows` equal windows of steps. It is stable when every loss is finite, no window's mean
    rises above the initial loss, or above the previous window's mean, by more than `tolerance`
    times the initial loss, and the last window's mean is below the initial loss. (Rises are
    measured on the initial loss's scale: minibatch noise of a few hundredths on a loss near 0
    is a large relative rise, and no instability.) It also has to get
    clear of chance early: the mean of the window holding the fraction `clear_by` of the steps
    (the middle by default) must be at most (1 − `clear_drop`) × the reference loss, the smaller
    of the initial loss and `chance` (the loss of a predictor at chance level: ln C for
    cross-entropy over C classes; None: the initial loss alone). A rate whose network sits near
    chance for half the trial and only then starts to learn is not the rate to train with.
    Returns the verdict, why, and the figures it was judged on.
    """
    losses = np.asarray(losses, np.float64)
    out = {"stable": False, "reason": "", "first": float("nan"), "last": float("nan"),
           "largest_rise": float("nan"), "diverged_at": -1, "clear_window_loss": float("nan"),
           "clear_threshold": float("nan")}
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        out.update(reason=f"loss not finite from step {int(bad[0]) + 1}", diverged_at=int(bad[0]) + 1)
        return out
    if len(losses) == 0:
        out["reason"] = "no steps"
        return out
    start = float(losses[0] if initial is None else initial)
    means = np.array([w.mean() for w in np.array_split(losses, min(windows, len(losses)))])
    # each window against the one before it, and the first window against the start, in
    # units of the initial loss
    rises = np.concatenate([[means[0] - start], np.diff(means)]) / start
    above_start = means / start - 1
    reference = start if chance is None else min(start, float(chance))
    # the window holding step clear_by * len: the middle one by default
    k = min(len(means) - 1, max(0, int(np.ceil(clear_by * len(means))) - 1))
    threshold = (1 - clear_drop) * reference
    out.update(first=float(start), last=float(means[-1]), largest_rise=float(rises.max()),
               clear_window_loss=float(means[k]), clear_threshold=float(threshold))
    if above_start.max() > tolerance:
        i = int(np.argmax(above_start))
        out["reason"] = f"window {i + 1} is {100 * above_start[i]:.0f}% above the initial loss"
    elif rises.max() > tolerance:
        i = int(np.argmax(rises))
        out["reason"] = (f"the loss rose by {100 * rises[i]:.0f}% of the initial loss from "
                         f"window {i} to {i + 1}")
    elif means[-1] >= start:
        out["reason"] = "the loss did not decrease"
    elif means[k] > threshold:
        out["reason"] = (f"near chance at window {k + 1} of {len(means)}: loss {means[k]:.3g} > "
                         f"{threshold:.3g} ({100 * (1 - clear_drop):.0f}% of {reference:.3g})")
    else:
        out.update(stable=True, reason="decreases smoothly")
    return out


def flat_displacement(params, theta0) -> np.ndarray:
    """θ − θ0 of one model as one float vector, leaves in pytree order (as cos_param)."""
    return np.concatenate([np.ravel(np.asarray(p) - np.asarray(p0)) for p, p0 in
                           zip(jax.tree.leaves(params), jax.tree.leaves(theta0))])
