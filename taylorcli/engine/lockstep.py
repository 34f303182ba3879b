"""The lockstep engine: the full network and its Taylorized models, one jitted step for all.

Every model starts from the same θ0, sees the same minibatch with the same
augmentation noise, and is updated by its own copy of one optax optimizer
(same schedule, per-model gradient clipping). The step is a pure function of
(state, epoch permutation, training set); its randomness is derived from the
step number, so the trajectory depends only on the recipe and the seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from .. import data as data_lib
from ..models import Network
from ..names import FULL, child_name, model_names, order_of, spawned_name
from ..taylor import taylorize, taylorize_nested
from .optimizer import make_loss, make_optimizer
from .state import LockstepState


@dataclass(frozen=True)
class LockstepModel:
    """One model of a lockstep run: its name, Taylor order, data-noise stream and re-expansion."""

    name: str
    order: int = 0  # 0: the network itself
    stream: int = 0  # index into Engine.streams; children draw their own minibatches
    reexpand: tuple[str, int] | None = None  # ("every", K) or ("doubling", K), in steps


def lockstep_models(recipe) -> tuple[LockstepModel, ...]:
    """The models a recipe trains: the network and its orders, or a spawned run's models."""
    sp = recipe.spawn
    orders = recipe.taylor.orders
    if sp.parent is None:
        every = tuple(LockstepModel(name, order_of(name)) for name in model_names(orders))
        # `models` trains a subset, with the seeds and data order of the whole recipe.
        return tuple(m for m in every if recipe.models is None or m.name in recipe.models)
    models = [LockstepModel(FULL)]
    for k in orders:
        models.append(LockstepModel(spawned_name(sp.epoch, k), k))
        for kind, intervals in (("every", sp.reexpand_every), ("doubling", sp.reexpand_doubling)):
            models += [LockstepModel(spawned_name(sp.epoch, k, (kind, K)), k, reexpand=(kind, K))
                       for K in intervals]
    models += [LockstepModel(child_name(i), stream=i + 1) for i in range(sp.children)]
    return tuple(models)


def noise_streams(recipe) -> tuple[int, ...]:
    """Seeds of the data-noise streams: 0 is the recipe's own order and augmentation."""
    sp = recipe.spawn
    return (0,) + (tuple(sp.child_seeds) or tuple(range(1, sp.children + 1)))


def spawn_step(recipe, steps_per_epoch: int) -> int:
    """The step a run starts from: 0, or the parent's step at a spawned run's epoch."""
    sp = recipe.spawn
    return 0 if sp.parent is None else int(round(sp.epoch * steps_per_epoch))


def reexpands_at(reexpand: tuple[str, int], steps_since: jax.Array) -> jax.Array:
    """Whether a re-expanding model moves its expansion point to its parameters at this step."""
    kind, k = reexpand
    due = (steps_since > 0) & (steps_since % k == 0)
    if kind == "every":
        return due
    # Doubling intervals K, 2K, 4K, ...: re-expansion at K·(2^j − 1), often early, rarely late.
    q = steps_since // k + 1
    return due & ((q & (q - 1)) == 0)


@dataclass(frozen=True)
class Engine:
    """Everything static about a lockstep run: models, optimizer, loss, augmentation."""

    apply: Callable
    models: tuple[LockstepModel, ...]
    optimizer: optax.GradientTransformation
    loss: Callable
    batch_size: int
    steps_per_epoch: int
    pad: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    nested: bool = False  # expand with taylorize_nested (the paper's construction), for benchmarks
    batch_sharding: Any = None  # split each batch across devices (see engine/devices.py)
    streams: tuple[int, ...] = (0,)  # data-noise stream seeds; the models index into them
    start_step: int = 0  # a spawned run's first step: re-expansion intervals count from here
    layers: tuple[str, ...] = ()  # the network's layers, input to output (layers.csv's order)
    train_size: int = 0  # examples per epoch; with keep_last, the last batch holds the rest
    keep_last: bool = False  # train on the last partial batch of each epoch (the authors' code)
    crop: str = "per_image"  # random crop offsets per image, or one per batch (the authors')

    @property
    def names(self) -> tuple[str, ...]:
        """Model names, in lockstep order (`full` first)."""
        return tuple(s.name for s in self.models)

    def model_fns(self, state: LockstepState) -> dict[str, Callable]:
        """`f(params, x)` of each model, each Taylorized one expanded around its expansion point."""
        expand = taylorize_nested if self.nested else taylorize
        return {s.name: self.apply if s.order == 0 else expand(self.apply, state.center(s.name),
                                                                 s.order)
                for s in self.models}

    def only(self, names) -> "Engine":
        """The same engine training only the models `names` (the full network alone: `[FULL]`)."""
        return dataclasses.replace(self, models=tuple(s for s in self.models if s.name in names)
                                   or tuple(LockstepModel(n, order_of(n)) for n in names))


def steps_per_epoch(recipe, train_size: int) -> int:
    """Optimizer steps per epoch: whole batches, plus the last partial one with last_batch: keep."""
    whole, rest = divmod(train_size, recipe.train.batch_size)
    return whole + (1 if rest and recipe.train.last_batch == "keep" else 0)


def build_engine(recipe, spec, network: Network, layers=()) -> Engine:
    """The engine a recipe describes, for a dataset of the given spec and its network."""
    spe = steps_per_epoch(recipe, spec.train_size)
    return Engine(
        apply=network.apply,
        models=lockstep_models(recipe),
        optimizer=make_optimizer(recipe.optim, spe, recipe.train.epochs),
        loss=make_loss(recipe.train.loss, spec.num_classes),
        batch_size=recipe.train.batch_size,
        steps_per_epoch=spe,
        pad=recipe.data.pad,
        flip=recipe.data.flip,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        streams=noise_streams(recipe),
        start_step=spawn_step(recipe, spe),
        layers=tuple(layers),
        train_size=spec.train_size,
        keep_last=recipe.train.last_batch == "keep" and spec.train_size % recipe.train.batch_size > 0,
        crop=recipe.data.crop,
    )


def rng_streams(seed: int, stream: int = 0) -> dict[str, jax.Array]:
    """Independent keys for initialization, shuffling and augmentation (per data-noise stream)."""
    root = jax.random.key(seed)
    if stream:
        root = jax.random.fold_in(jax.random.fold_in(root, 0x5EED), stream)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(["init", "shuffle", "augment"])}


def initial_params(network: Network, seed: int, image_shape) -> Any:
    """θ0 from the run's seed, in the run's precision."""
    # One compiled program instead of one per initializer call (each a cache lookup at start).
    init = jax.jit(network.init, static_argnums=1)
    theta0 = init(rng_streams(seed)["init"], tuple(image_shape))
    # flax initializes float32 parameters; under train.precision float64 they are widened
    return jax.tree.map(lambda a: a.astype(data_lib.float_dtype()), theta0)


def lockstep_state(engine: Engine, step, theta, opt_state) -> LockstepState:
    """Every model at θ with the optimizer state `opt_state`, nothing diverged, from `step`."""
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    # Separate buffers per model: the step donates its state, and donated buffers must be distinct.
    return LockstepState(
        step=jnp.asarray(step, jnp.int32),
        theta0=theta,
        params={n: copy(theta) for n in engine.names},
        opt={n: copy(opt_state) for n in engine.names},
        diverged={n: jnp.zeros((), bool) for n in engine.names},
        stats=zero_stats(engine),
        centers={s.name: copy(theta) for s in engine.models if s.reexpand},
    )


def fresh_state(engine: Engine, theta0) -> LockstepState:
    """Step 0: every model at the same θ0, fresh optimizer states, nothing diverged."""
    return lockstep_state(engine, jnp.zeros((), jnp.int32), theta0, engine.optimizer.init(theta0))


def zero_stats(engine: Engine) -> dict:
    """Per model [Σ minibatch loss, Σ minibatch accuracy, number of minibatches] since the last evaluation."""
    return {n: jnp.zeros(3, data_lib.float_dtype()) for n in engine.names}


def epoch_permutation(seed: int, epoch: int, n: int, stream: int = 0) -> jax.Array:
    """The order of the training set in one epoch."""
    return jax.random.permutation(jax.random.fold_in(rng_streams(seed, stream)["shuffle"], epoch), n)


def epoch_permutations(engine: Engine, seed: int, epoch: int, n: int) -> jax.Array:
    """One epoch's order for every data-noise stream, stacked: the step's `perms` argument."""
    return jnp.stack([epoch_permutation(seed, epoch, n, s) for s in engine.streams])


def make_train_step(engine: Engine, seed: int) -> Callable:
    """`step(state, perms, train_x, train_y) -> (state, stats)`, all models on one shared batch.

    `perms` is `epoch_permutations(...)`, one row per data-noise stream (or one permutation).

    Children (models with their own data-noise stream) get their own minibatch and augmentation.
    """
    aug_keys = [rng_streams(seed, s)["augment"] for s in engine.streams]

    def batch(state, perms, train_x, train_y, j):
        i = state.step % engine.steps_per_epoch
        perm, weights = perms[j], None
        if engine.keep_last:
            # The last batch of an epoch is partial: padded to the batch size with examples
            # that weigh nothing, so one compiled step serves every step of the epoch.
            pad = engine.steps_per_epoch * engine.batch_size - perm.shape[0]
            perm = jnp.concatenate([perm, perm[:pad]])
            position = i * engine.batch_size + jnp.arange(engine.batch_size)
            weights = (position < engine.train_size).astype(data_lib.float_dtype())
        idx = jax.lax.dynamic_slice_in_dim(perm, i * engine.batch_size, engine.batch_size)
        x = data_lib.augment(jax.random.fold_in(aug_keys[j], state.step), train_x[idx],
                             pad=engine.pad, flip=engine.flip, mean=engine.mean, std=engine.std,
                             crop=engine.crop)
        y = train_y[idx]
        if engine.batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, engine.batch_sharding)
            y = jax.lax.with_sharding_constraint(y, engine.batch_sharding)
        return x, y, weights

    def step(state: LockstepState, perms, train_x, train_y):
        perms = perms[None] if perms.ndim == 1 else perms  # one stream: a plain permutation will do
        batches = [batch(state, perms, train_x, train_y, j) for j in range(len(engine.streams))]
        fns = engine.model_fns(state)
        params, opts, diverged, sums, stats = {}, {}, {}, {}, {}
        for model in engine.models:
            name, fn = model.name, fns[model.name]
            x, y, weights = batches[model.stream]

            def loss_fn(p, fn=fn, x=x, y=y, weights=weights):
                logits = fn(p, x)
                return engine.loss(logits, y, weights), logits

            before = state.params[name]
            (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(before)
            updates, opt = engine.optimizer.update(grads, state.opt[name], before)
            stepped = optax.apply_updates(before, updates)
            finite = jnp.isfinite(loss) & all_finite(stepped)
            diverged[name] = state.diverged[name] | ~finite
            # A diverged model is frozen where it was, so its last finite state stays inspectable.
            keep = lambda a, b, d=diverged[name]: jnp.where(d, a, b)
            params[name] = jax.tree.map(keep, before, stepped)
            opts[name] = jax.tree.map(keep, state.opt[name], opt)
            hits = (jnp.argmax(logits, -1) == y).astype(loss.dtype)
            correct = jnp.sum(hits) if weights is None else jnp.sum(hits * weights)
            stats[name] = jnp.stack([loss, correct])
            examples = engine.batch_size if weights is None else jnp.sum(weights)
            # Running sums since the last evaluation: the loss, the accuracy, one more minibatch.
            sums[name] = state.stats[name] + jnp.stack([loss, correct / examples,
                                                        jnp.ones_like(loss)])
        # Moved at the end of the step that reaches a re-expansion point, so the state always
        # holds the expansion point of the step it is at (evaluations and kernels see it too).
        since = state.step + 1 - engine.start_step
        centers = {s.name: jax.tree.map(
            lambda p, c, s=s: jnp.where(reexpands_at(s.reexpand, since), p, c),
            params[s.name], state.centers[s.name]) for s in engine.models if s.reexpand}
        new = state.replace(step=state.step + 1, params=params, opt=opts, diverged=diverged,
                            stats=sums, centers=centers)
        return new, stats

    return step


def all_finite(tree) -> jax.Array:
    """Whether every leaf of a pytree is finite everywhere."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def make_eval_logits(engine: Engine) -> Callable:
    """`logits(state, x) -> {model: logits}` on standardized inputs."""

    def logits(state: LockstepState, x):
        fns = engine.model_fns(state)
        return {n: fn(state.params[n], x) for n, fn in fns.items()}

    return logits
