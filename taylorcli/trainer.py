"""`taylorcli train`: recipe → data + models → lockstep engine → run directory, resumable.

A run survives clusters: it checkpoints on a schedule and on SIGTERM/SIGUSR1, a second
`train` on the same directory continues from the newest complete checkpoint, and a run
killed at any moment and resumed writes the same metrics.csv, value for value, as one
that was never interrupted (all randomness derives from the seed and the step number; the
running training statistics live in the checkpointed state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from . import data as data_lib
from . import distributed
from .checkpoints import Checkpoints
from .devices import batch_sharding, data_mesh, replicate
from .evaluate import Evaluator
from .merge import save_params
from .recipe import Recipe, RecipeError, dump_recipe, load_recipe, recipe_to_dict
from .runs import RunDir, RunDirError
from .train import FULL, build_engine, epoch_permutations, init_state, make_schedule, \
    make_train_step, spawn_step, zero_stats


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports back to the CLI."""

    run_dir: RunDir
    steps: int
    seconds: float
    final: list[dict]
    diverged: dict[str, float] = field(default_factory=dict)


class Stopped(Exception):
    """SIGTERM/SIGUSR1 arrived; the run checkpointed at `step` and can be continued."""

    def __init__(self, step: int):
        super().__init__(f"signal received, checkpoint saved at step {step}; rerun the "
                         f"same command to continue")
        self.step = step


class FullDiverged(Exception):
    """The full network's loss or parameters became non-finite: the run cannot go on."""


def evaluation_steps(recipe: Recipe, steps_per_epoch: int) -> list[int]:
    """Steps at which every model is evaluated: the start, every `eval.every_epochs`, `eval.steps`, the end.

    A spawned run starts at its spawn step and evaluates there and at the parent's later points.
    """
    total = recipe.train.epochs * steps_per_epoch
    every = recipe.eval.every_epochs
    first = spawn_step(recipe, steps_per_epoch)
    points = {first, total}
    points |= {e * steps_per_epoch for e in range(every, recipe.train.epochs + 1, every)}
    points |= {s for s in recipe.eval.steps if s < total}
    return sorted(p for p in points if p >= first)


def checkpoint_steps(recipe: Recipe, steps_per_epoch: int) -> set[int]:
    """Steps after which the state is checkpointed: the intervals, the kept epochs, the end."""
    total = recipe.train.epochs * steps_per_epoch
    c = recipe.checkpoint
    steps = {total} | {e * steps_per_epoch for e in c.keep_epochs}
    steps |= set(range(c.every_epochs * steps_per_epoch, total, c.every_epochs * steps_per_epoch))
    if c.every_steps:
        steps |= set(range(c.every_steps, total, c.every_steps))
    first = spawn_step(recipe, steps_per_epoch)
    return {s for s in steps if s >= first}


def load_data(recipe: Recipe, source: str = "recipe") -> data_lib.Dataset:
    """The recipe's dataset, with the batch size checked against it."""
    d = recipe.data
    ds = data_lib.load_dataset(
        d.dataset, data_dir=d.data_dir, archive=d.archive, train_limit=d.train_limit,
        test_limit=d.test_limit, synthetic_train=d.synthetic_train,
        synthetic_test=d.synthetic_test, seed=recipe.seed)
    devices = 1 if recipe.train.split_models else jax.device_count()  # split: whole batches
    if recipe.train.batch_size % devices:
        raise RecipeError(f"{source}: key train.batch_size: expected a multiple of the {devices} "
                          f"devices the batch is split across, got {recipe.train.batch_size}")
    if recipe.train.batch_size > len(ds.train_y):
        raise RecipeError(f"{source}: key train.batch_size: expected at most the training set "
                          f"size {len(ds.train_y)} of {d.dataset}, got {recipe.train.batch_size}")
    return ds


def spec_of(ds: data_lib.Dataset) -> data_lib.DatasetSpec:
    """The shapes and constants of a loaded dataset."""
    return data_lib.DatasetSpec(
        name=ds.name, image_shape=tuple(ds.train_x.shape[1:]), num_classes=ds.num_classes,
        train_size=len(ds.train_y), test_size=len(ds.test_y), mean=ds.mean, std=ds.std)


@contextlib.contextmanager
def stop_signals():
    """SIGTERM and SIGUSR1 (SLURM preemption and time limit) ask for a checkpoint and a clean exit."""
    asked: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return
    old = {sig: signal.signal(sig, lambda signum, frame: asked.append(signum))
           for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield asked
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def train(recipe: Recipe, out: str, progress, resume: bool = True,
          source: str = "recipe") -> TrainResult:
    """Train the full network and its Taylorized models in lockstep, writing the run directory.

    An existing run directory is continued from its newest complete checkpoint; with
    `resume=False` it is started over.
    """
    run = distributed.run_dir(out)  # written by process 0 only
    if run.has_run() and resume:
        check_same_recipe(run, recipe)
    ds = load_data(recipe, source)
    run.prepare()
    lock = distributed.run_lock(run.path)
    lock.acquire()
    try:
        with stop_signals() as asked:
            return _train(recipe, run, ds, progress, resume, asked)
    finally:
        lock.release()


def _train(recipe: Recipe, run: RunDir, ds, progress, resume: bool, asked: list) -> TrainResult:
    spec = spec_of(ds)
    mesh = None if recipe.train.split_models else data_mesh()
    engine = dataclasses.replace(build_engine(recipe, spec), batch_sharding=batch_sharding(mesh))
    spe = engine.steps_per_epoch
    total = recipe.train.epochs * spe
    schedule = make_schedule(recipe.optim, spe)
    points = evaluation_steps(recipe, spe)
    saves = checkpoint_steps(recipe, spe)

    start, metrics, layers, tables = spawn_step(recipe, spe), [], [], {}
    if not (run.has_run() and resume):
        run.clear_results()
    distributed.barrier("cleared")  # no process reads checkpoints process 0 is deleting
    ckpts = Checkpoints(run.checkpoints_path, recipe.checkpoint.keep,
                        [e * spe for e in recipe.checkpoint.keep_epochs])
    try:
        latest = ckpts.latest_step()
        if latest is not None:
            like = jax.eval_shape(lambda: init_state(engine, recipe, spec))  # same layout
            state, meta = ckpts.restore(latest, like)
            start, metrics, layers = latest, _rows_in(meta["metrics"]), _rows_in(meta["layers"])
            tables = {k: _rows_in(v) for k, v in meta.get("tables", {}).items()}
        else:
            state = initial_state(engine, recipe, spec, ds)
            run.write_recipe(dump_recipe(recipe))
        step_fn = jax.jit(make_train_step(engine, recipe.seed), donate_argnums=0)
        state = replicate(state, mesh)
        train_x, train_y = replicate((jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)), mesh)
        evaluator = Evaluator(engine, ds, recipe.eval.batch_size, state)
        if recipe.train.split_models:
            from .split import split_models

            step_fn, state, evaluator = split_models(engine, recipe.seed, state, evaluator)
        analyses = extra_analyses(recipe, ds, spec, evaluator, run, points, schedule)
        progress.start(total, spe, engine.names, first_step=start)
        t0 = time.monotonic()
        perm, last = None, {}
        for step in range(start, total + 1):
            # A checkpoint at `start` was taken after that step's evaluation and saves.
            resumed_here = latest is not None and step == start
            if step in points and not resumed_here:
                epoch = step / spe
                rows, layer_rows, logits = evaluator(state, step, epoch, float(schedule(step)))
                flags = {r["model"]: jnp.asarray(r["diverged"]) for r in rows}
                state = replicate({**state, "stats": zero_stats(engine), "diverged": flags}, mesh)
                metrics += rows
                layers += layer_rows
                run.write_metrics(metrics)
                run.write_layers(layers)
                if recipe.eval.save_logits:
                    run.write_logits(step, logits)
                for analysis in analyses:
                    tables.setdefault(analysis.file, []).extend(
                        analysis(state, step, epoch, logits))
                    run.write_table(run.path / analysis.file, tables[analysis.file],
                                    analysis.columns)
                save_params(run, recipe, step, state)  # only runs of a `models` subset
                progress.evaluation(step, epoch, rows)
                if any(r["diverged"] for r in rows if r["model"] == FULL):
                    raise FullDiverged(f"the full network diverged by step {step} (epoch "
                                       f"{epoch:g}): its loss or parameters are not finite; "
                                       f"see {run.metrics_path}")
            # A finished run has nothing to requeue; several processes stop at the same step.
            stopping = step < total and distributed.agree_to_stop(bool(asked), step)
            if not resumed_here and (step in saves or stopping):
                ckpts.save(step, state, {"metrics": _rows_out(metrics),
                                         "layers": _rows_out(layers),
                                         "tables": {k: _rows_out(v) for k, v in tables.items()}})
            if stopping:
                ckpts.wait()
                raise Stopped(step)
            if step == total:
                break
            if perm is None or step % spe == 0:
                perm = replicate(epoch_permutations(engine, recipe.seed, step // spe,
                                                    len(ds.train_y)), mesh)
            state, last = step_fn(state, perm, train_x, train_y)
            progress.step(step + 1, lambda: jax.device_get(last))
    finally:
        progress.close()
        ckpts.close()
    seconds = time.monotonic() - t0
    progress.finish(f"done: steps {start}..{total} in {seconds:.1f} s; results in {run.path}")
    return TrainResult(run, total, seconds, metrics[-len(engine.names):],
                       diverged_models(metrics))


def initial_state(engine, recipe: Recipe, spec, ds) -> dict:
    """The state a new run starts from: θ0 from the seed, or a parent's network for a spawned run."""
    if recipe.spawn.parent is None:
        return init_state(engine, recipe, spec)
    from .spawn import spawned_state

    return spawned_state(engine, recipe, spec, ds)


def extra_analyses(recipe: Recipe, ds, spec, evaluator, run: RunDir, points: list[int],
                   schedule) -> list:
    """Analyses beyond metrics.csv that a recipe asks for, each writing its own table."""
    from .children import ChildrenMetrics
    from .kernel_dynamics import KernelDynamics
    from .lee import ClosedFormComparison

    engine = evaluator.engine
    wanted = recipe.spawn.children >= 2 or recipe.eval.kernel_n or recipe.eval.closed_form
    if wanted and jax.process_count() > 1:
        raise RecipeError("eval.kernel_n, eval.closed_form and spawn children run in one "
                          "process; run them without srun's several tasks")
    analyses = []
    # Built only when asked for: each holds data (a kernel subset, the standardized training
    # set) and compiled functions that an ordinary run should not pay for.
    if recipe.spawn.children >= 2:
        analyses.append(ChildrenMetrics(recipe, spec, evaluator))
    if recipe.eval.kernel_n:
        analyses.append(KernelDynamics(recipe, ds, engine, run.path))
    if recipe.eval.closed_form:
        analyses.append(ClosedFormComparison(recipe, ds, engine, evaluator, points, schedule))
    return analyses


def check_same_recipe(run: RunDir, recipe: Recipe) -> None:
    """Refuse to continue a run with a recipe other than the one it was started with."""
    try:
        saved = recipe_to_dict(load_recipe(run.path / "recipe.yaml"))
    except RecipeError as e:
        raise RunDirError(f"--out {run.path}: cannot resume, its recipe.yaml is unreadable "
                          f"({e}); pass --no-resume to start over") from None
    diffs = [f"{key}: {old!r} there, {new!r} here"
             for key, new, old in _differences(recipe_to_dict(recipe), saved)]
    if diffs:
        raise RunDirError(f"--out {run.path}: holds a run of a different recipe "
                          f"({'; '.join(diffs[:3])}); pass --no-resume to start over, or choose "
                          f"another --out")


def _differences(new: dict, old: dict, prefix: str = ""):
    for key, value in new.items():
        if isinstance(value, dict):
            yield from _differences(value, old.get(key) or {}, f"{prefix}{key}.")
        elif old.get(key) != value:
            yield f"{prefix}{key}", value, old.get(key)


def diverged_models(metrics: list[dict]) -> dict[str, float]:
    """Taylorized models marked diverged, with the first epoch at which they were."""
    first: dict[str, float] = {}
    for row in metrics:
        if row["diverged"] and row["model"] != FULL:
            first.setdefault(row["model"], row["epoch"])
    return first


def _rows_out(rows: list[dict]) -> list[dict]:
    # JSON has no NaN; None stands in for it inside checkpoints.
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in rows]


def _rows_in(rows: list[dict]) -> list[dict]:
    return [{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows]
