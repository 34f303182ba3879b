"""The optimizer, its learning-rate schedule and the loss, from a recipe's optim and train sections."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def make_schedule(optim, steps_per_epoch: int, epochs: int | None = None) -> optax.Schedule:
    """Learning rate per step: constant, step decay at the recipe's epochs, cosine decay to
    final_lr_factor x lr over the run, or a linear warmup then cosine (optax's schedules)."""
    if optim.schedule in ("cosine", "warmup_cosine"):
        total = max((epochs or 1) * steps_per_epoch, 1)
        if optim.schedule == "cosine":
            return optax.cosine_decay_schedule(optim.lr, total, alpha=optim.final_lr_factor)
        return optax.warmup_cosine_decay_schedule(
            0.0, optim.lr, optim.warmup_epochs * steps_per_epoch, total,
            end_value=optim.lr * optim.final_lr_factor)
    epochs_at = list(optim.decay_epochs) or [f * (epochs or 0) for f in optim.decay_fractions]
    if optim.schedule == "constant" or not epochs_at:
        return optax.constant_schedule(optim.lr)
    boundaries = {round(e * steps_per_epoch): optim.decay_factor for e in epochs_at}
    return optax.piecewise_constant_schedule(optim.lr, boundaries)


def make_optimizer(optim, steps_per_epoch: int, epochs: int | None = None
                   ) -> optax.GradientTransformation:
    """Clip by global norm, add weight decay (L2), then SGD (with optional momentum) or Adam on
    the schedule."""
    parts = []
    if optim.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    if optim.weight_decay > 0:
        parts.append(optax.add_decayed_weights(optim.weight_decay))
    schedule = make_schedule(optim, steps_per_epoch, epochs)
    if optim.name == "adam":
        parts.append(optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
    else:
        parts.append(optax.sgd(schedule, momentum=optim.momentum or None,
                               nesterov=optim.nesterov))
    return optax.chain(*parts)


def make_loss(kind: str, num_classes: int) -> Callable:
    """`loss(logits, labels, weights=None)`: the mean loss over a batch (weighted: over the
    examples that weigh something, for a padded partial batch)."""
    if kind == "mse":
        # Lee et al.: L = 1/(2N) Σ ‖f(x) − y‖² with one-hot targets.
        each = lambda logits, y: 0.5 * jnp.sum((logits - jax.nn.one_hot(y, num_classes)) ** 2,
                                               axis=-1)
    else:
        each = optax.softmax_cross_entropy_with_integer_labels

    def loss(logits, y, weights=None):
        values = each(logits, y)
        if weights is None:
            return jnp.mean(values)
        return jnp.sum(values * weights) / jnp.sum(weights)

    return loss
