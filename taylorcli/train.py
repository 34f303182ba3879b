"""The lockstep engine: the full network and its Taylorized models, one jitted step for all.

Every model starts from the same θ0, sees the same minibatch with the same
augmentation noise, and is updated by its own copy of one optax optimizer
(same schedule, per-model gradient clipping). The step is a pure function of
(state, epoch permutation, training set); its randomness is derived from the
step number, so the trajectory depends only on the recipe and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from . import data as data_lib
from .models import apply_fn, build_model, init_params
from .taylor import taylorize, taylorize_nested

FULL = "full"


def model_names(orders) -> list[str]:
    """Names of the models trained in lockstep: `full`, then `order1` … `orderK`."""
    return [FULL] + [f"order{k}" for k in orders]


def order_of(name: str) -> int:
    """Taylor order of a model name (0 for the full network)."""
    return 0 if name == FULL else int(name.removeprefix("order"))


def make_schedule(optim, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate per step: constant, or step decay at the recipe's epochs."""
    if optim.schedule == "constant" or not optim.decay_epochs:
        return optax.constant_schedule(optim.lr)
    boundaries = {e * steps_per_epoch: optim.decay_factor for e in optim.decay_epochs}
    return optax.piecewise_constant_schedule(optim.lr, boundaries)


def make_optimizer(optim, steps_per_epoch: int) -> optax.GradientTransformation:
    """Clip by global norm, add weight decay, then SGD (with optional momentum) on the schedule."""
    parts = []
    if optim.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    if optim.weight_decay > 0:
        parts.append(optax.add_decayed_weights(optim.weight_decay))
    parts.append(optax.sgd(
        make_schedule(optim, steps_per_epoch),
        momentum=optim.momentum or None,
        nesterov=optim.nesterov,
    ))
    return optax.chain(*parts)


def make_loss(kind: str, num_classes: int) -> Callable:
    """Mean loss over a batch from logits and integer labels."""
    if kind == "mse":
        # Lee et al.: L = 1/(2N) Σ ‖f(x) − y‖² with one-hot targets.
        return lambda logits, y: 0.5 * jnp.mean(
            jnp.sum((logits - jax.nn.one_hot(y, num_classes)) ** 2, axis=-1))
    return lambda logits, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


@dataclass(frozen=True)
class Engine:
    """Everything static about a lockstep run: models, optimizer, loss, augmentation."""

    apply: Callable
    names: tuple[str, ...]
    optimizer: optax.GradientTransformation
    loss: Callable
    batch_size: int
    steps_per_epoch: int
    pad: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    nested: bool = False  # expand with taylorize_nested (the paper's construction), for benchmarks
    batch_sharding: Any = None  # split each batch across devices (see devices.py)

    def model_fns(self, theta0) -> dict[str, Callable]:
        """`f(params, x)` of each model, the Taylorized ones expanded around θ0."""
        expand = taylorize_nested if self.nested else taylorize
        return {n: self.apply if n == FULL else expand(self.apply, theta0, order_of(n))
                for n in self.names}


def build_engine(recipe, spec) -> Engine:
    """The engine a recipe describes, for a dataset of the given spec."""
    steps_per_epoch = spec.train_size // recipe.train.batch_size
    return Engine(
        apply=apply_fn(build_model(recipe.model, spec.num_classes)),
        # `models` trains a subset, with the seeds and data order of the whole recipe.
        names=tuple(n for n in model_names(recipe.taylor.orders)
                    if recipe.models is None or n in recipe.models),
        optimizer=make_optimizer(recipe.optim, steps_per_epoch),
        loss=make_loss(recipe.train.loss, spec.num_classes),
        batch_size=recipe.train.batch_size,
        steps_per_epoch=steps_per_epoch,
        pad=recipe.data.pad,
        flip=recipe.data.flip,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
    )


def rng_streams(seed: int) -> dict[str, jax.Array]:
    """Independent keys for initialization, shuffling and augmentation."""
    root = jax.random.key(seed)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(["init", "shuffle", "augment"])}


def init_state(engine: Engine, recipe, spec) -> dict:
    """Step 0: every model at the same θ0, fresh optimizer states, nothing diverged."""
    model = build_model(recipe.model, spec.num_classes)
    theta0 = init_params(model, rng_streams(recipe.seed)["init"], spec.image_shape)
    return {
        "step": jnp.zeros((), jnp.int32),
        "theta0": theta0,
        # Separate buffers per model: the step donates its state, and donated buffers must be distinct.
        "params": {n: jax.tree.map(jnp.copy, theta0) for n in engine.names},
        "opt": {n: engine.optimizer.init(theta0) for n in engine.names},
        "diverged": {n: jnp.zeros((), bool) for n in engine.names},
        "stats": zero_stats(engine),
    }


def zero_stats(engine: Engine) -> dict:
    """Per model [Σ minibatch loss, Σ correct, number of minibatches] since the last evaluation."""
    return {n: jnp.zeros(3, jnp.float32) for n in engine.names}


def epoch_permutation(seed: int, epoch: int, n: int) -> jax.Array:
    """The order of the training set in one epoch."""
    return jax.random.permutation(jax.random.fold_in(rng_streams(seed)["shuffle"], epoch), n)


def make_train_step(engine: Engine, seed: int) -> Callable:
    """`step(state, perm, train_x, train_y) -> (state, stats)`, all models on one shared batch."""
    aug_key = rng_streams(seed)["augment"]

    def step(state, perm, train_x, train_y):
        i = state["step"] % engine.steps_per_epoch
        idx = jax.lax.dynamic_slice_in_dim(perm, i * engine.batch_size, engine.batch_size)
        x = data_lib.augment(jax.random.fold_in(aug_key, state["step"]), train_x[idx],
                             pad=engine.pad, flip=engine.flip, mean=engine.mean, std=engine.std)
        y = train_y[idx]
        if engine.batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, engine.batch_sharding)
            y = jax.lax.with_sharding_constraint(y, engine.batch_sharding)
        fns = engine.model_fns(state["theta0"])
        new = {"params": {}, "opt": {}, "diverged": {}}
        stats = {}
        for name, fn in fns.items():
            def loss_fn(p, fn=fn):
                logits = fn(p, x)
                return engine.loss(logits, y), logits

            params = state["params"][name]
            (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt = engine.optimizer.update(grads, state["opt"][name], params)
            stepped = optax.apply_updates(params, updates)
            finite = jnp.isfinite(loss) & all_finite(stepped)
            diverged = state["diverged"][name] | ~finite
            # A diverged model is frozen where it was, so its last finite state stays inspectable.
            keep = lambda a, b: jnp.where(diverged, a, b)
            new["params"][name] = jax.tree.map(keep, params, stepped)
            new["opt"][name] = jax.tree.map(keep, state["opt"][name], opt)
            new["diverged"][name] = diverged
            stats[name] = jnp.stack([loss, jnp.sum(jnp.argmax(logits, -1) == y).astype(loss.dtype)])
        # The running sums live in the state, so a checkpoint between evaluations loses nothing.
        sums = {n: state["stats"][n] + jnp.append(stats[n], 1.0) for n in stats}
        return {"step": state["step"] + 1, "theta0": state["theta0"], **new, "stats": sums}, stats

    return step


def all_finite(tree) -> jax.Array:
    """Whether every leaf of a pytree is finite everywhere."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def make_eval_logits(engine: Engine) -> Callable:
    """`logits(state, x) -> {model: logits}` on standardized inputs."""

    def logits(state, x):
        fns = engine.model_fns(state["theta0"])
        return {n: fn(state["params"][n], x) for n, fn in fns.items()}

    return logits
