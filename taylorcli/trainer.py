"""`taylorcli train`: recipe → data + models → lockstep engine → run directory."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from . import data as data_lib
from .metrics import cos_func, cos_param, layer_movement, layer_paths, loss_and_accuracy
from .recipe import Recipe, RecipeError, dump_recipe
from .runs import RunDir, RunDirError
from .train import FULL, build_engine, epoch_permutation, init_state, make_eval_logits, \
    make_schedule, make_train_step, order_of


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports back to the CLI."""

    run_dir: RunDir
    steps: int
    seconds: float
    final: list[dict]


def evaluation_steps(recipe: Recipe, steps_per_epoch: int) -> list[int]:
    """Steps at which every model is evaluated: 0, every `eval.every_epochs`, `eval.steps`, the end."""
    total = recipe.train.epochs * steps_per_epoch
    every = recipe.eval.every_epochs
    points = {0, total}
    points |= {e * steps_per_epoch for e in range(every, recipe.train.epochs + 1, every)}
    points |= {s for s in recipe.eval.steps if s < total}
    return sorted(points)


def load_data(recipe: Recipe) -> data_lib.Dataset:
    """The recipe's dataset, with the batch size checked against it."""
    d = recipe.data
    ds = data_lib.load_dataset(
        d.dataset, data_dir=d.data_dir, archive=d.archive, train_limit=d.train_limit,
        test_limit=d.test_limit, synthetic_train=d.synthetic_train,
        synthetic_test=d.synthetic_test, seed=recipe.seed)
    if recipe.train.batch_size > len(ds.train_y):
        raise RecipeError(f"key train.batch_size: expected at most the training set size "
                          f"{len(ds.train_y)} of {d.dataset}, got {recipe.train.batch_size}")
    return ds


def spec_of(ds: data_lib.Dataset) -> data_lib.DatasetSpec:
    """The shapes and constants of a loaded dataset."""
    return data_lib.DatasetSpec(
        name=ds.name, image_shape=tuple(ds.train_x.shape[1:]), num_classes=ds.num_classes,
        train_size=len(ds.train_y), test_size=len(ds.test_y), mean=ds.mean, std=ds.std)


class Evaluator:
    """Test logits, losses, accuracies, cos_param, cos_func and layer movement of every model."""

    def __init__(self, engine, ds: data_lib.Dataset, eval_batch: int, state):
        self.engine = engine
        self.batch = min(eval_batch, len(ds.test_y))
        n = len(ds.test_y)
        padded = math.ceil(n / self.batch) * self.batch
        x = data_lib.standardize(jnp.asarray(ds.test_x), mean=ds.mean, std=ds.std)
        # Pad to whole batches so one compiled function serves the whole test set.
        self.test_x = jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1))
        self.test_y = jnp.asarray(ds.test_y)
        self.n = n
        self.logits_fn = jax.jit(make_eval_logits(engine))
        self.layers = layer_paths(state["theta0"])
        self.geometry = jax.jit(self._geometry)

    def _geometry(self, state):
        full = state["params"][FULL]
        out = {}
        for name, params in state["params"].items():
            dist, rel = layer_movement(params, state["theta0"])
            out[name] = (cos_param(full, params, state["theta0"]), dist, rel)
        return out

    def logits(self, state) -> dict[str, np.ndarray]:
        """Test-set logits of every model."""
        parts = [self.logits_fn(state, self.test_x[i:i + self.batch])
                 for i in range(0, self.test_x.shape[0], self.batch)]
        return {n: np.concatenate([np.asarray(p[n]) for p in parts])[: self.n]
                for n in self.engine.names}

    def __call__(self, state, step: int, epoch: float, lr: float, train_stats: dict):
        """Metrics rows, layer rows and logits at one evaluation point."""
        logits = self.logits(state)
        geometry = jax.device_get(self.geometry(state))
        diverged = jax.device_get(state["diverged"])
        rows, layer_rows = [], []
        for name in self.engine.names:
            test_loss, test_acc = loss_and_accuracy(logits[name], self.test_y, self.engine.loss)
            cp, dist, rel = geometry[name]
            train_loss, train_acc = train_stats.get(name, (math.nan, math.nan))
            rows.append({
                "model": name, "order": order_of(name), "epoch": round(epoch, 6), "step": step,
                "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                "test_loss": test_loss, "test_acc": test_acc,
                "cos_param": float(cp) if name != FULL or step == 0 else 1.0,
                "cos_func": cos_func(logits[FULL], logits[name]),
                "diverged": bool(diverged[name]),
            })
            layer_rows += [{"model": name, "epoch": round(epoch, 6), "layer": layer,
                            "distance": float(d), "relative_distance": float(r)}
                           for layer, d, r in zip(self.layers, dist, rel)]
        return rows, layer_rows, logits


def train(recipe: Recipe, out: str, progress, resume: bool = True) -> TrainResult:
    """Train the full network and its Taylorized models in lockstep, writing the run directory."""
    run = RunDir(out)
    if run.has_run() and resume:
        raise RunDirError(f"--out {run.path}: already holds a run and it cannot be resumed "
                          f"(no checkpoints are kept yet); pass --no-resume to start it over, "
                          f"or choose another --out")
    ds = load_data(recipe)
    run.prepare()
    if run.has_run():
        run.clear_results()
    run.write_recipe(dump_recipe(recipe))

    spec = spec_of(ds)
    engine = build_engine(recipe, spec)
    spe = engine.steps_per_epoch
    total = recipe.train.epochs * spe
    schedule = make_schedule(recipe.optim, spe)
    state = init_state(engine, recipe, spec)
    step_fn = jax.jit(make_train_step(engine, recipe.seed), donate_argnums=0)
    train_x, train_y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    evaluator = Evaluator(engine, ds, recipe.eval.batch_size, state)
    points = evaluation_steps(recipe, spe)

    metrics, layers, pending = [], [], []
    progress.start(total, spe, engine.names)
    t0 = time.monotonic()
    perm = None
    latest = lambda: jax.device_get(pending[-1]) if pending else {}
    for step in range(total + 1):
        if step in points:
            train_stats = _mean_stats(pending, engine.batch_size)
            pending = []
            epoch = step / spe
            rows, layer_rows, logits = evaluator(state, step, epoch, float(schedule(step)),
                                                 train_stats)
            metrics += rows
            layers += layer_rows
            run.write_metrics(metrics)
            run.write_layers(layers)
            if recipe.eval.save_logits:
                run.write_logits(step, logits)
            progress.evaluation(step, epoch, rows)
        if step == total:
            break
        if step % spe == 0:
            perm = epoch_permutation(recipe.seed, step // spe, len(ds.train_y))
        state, stats = step_fn(state, perm, train_x, train_y)
        pending.append(stats)
        progress.step(step + 1, latest)
    seconds = time.monotonic() - t0
    progress.finish(f"done: {total} steps in {seconds:.1f} s; results in {run.path}")
    return TrainResult(run, total, seconds, metrics[-len(engine.names):])


def _mean_stats(pending: list, batch: int) -> dict[str, tuple[float, float]]:
    """Mean minibatch loss and accuracy since the last evaluation point."""
    if not pending:
        return {}
    stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *pending))
    return {n: (float(v[:, 0].mean()), float(v[:, 1].sum() / (batch * len(v))))
            for n, v in stacked.items()}
