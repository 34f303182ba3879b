"""The training loop: recipe → data + network → lockstep engine → run directory, resumable.

A run survives clusters: it checkpoints on a schedule and on SIGTERM/SIGUSR1, a second
`train` on the same directory continues from the newest intact checkpoint, and a run killed
at any moment and resumed writes the same tables, value for value, as one that was never
interrupted (all randomness derives from the seed and the step number; the running training
statistics live in the checkpointed state; the rows come back from the run's own tables, cut
at the restored step and checked against the digests the checkpoint recorded). Only the
wall_time column, the seconds since the run began, differs.

Nothing is deleted before the new run has been validated and built, and only what taylorcli
wrote for the run (`files.py`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp

from .. import data as data_lib
from ..engine import compile_cache, processes
from ..engine.costs import check_fits
from ..engine.devices import batch_sharding, check_batch, data_mesh, replicate
from ..engine.evaluation import Evaluator
from ..engine.lockstep import epoch_permutations, make_train_step, zero_stats
from ..engine.optimizer import make_schedule
from ..engine.setup import Setup, build_setup
from ..errors import FullDiverged, ModelError, RecipeError, Stopped
from ..files import FolderLock
from ..metrics import flat_displacement
from ..names import FULL
from ..recipe import Recipe, dump_recipe, trains_subset
from . import signals
from .analysis import AnalysisFactory, Point, RunContext
from .checkpoints import Checkpoints
from .directory import ReadOnlyRunDir, RunDir
from .progress import QuietProgress
from .resume import check_same_recipe, record_changes
from .schedule import checkpoint_steps, evaluation_steps
from .start import initial_state
from .tables import LAYERS_COLUMNS, METRICS_COLUMNS, Tables


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports back."""

    run_dir: RunDir
    steps: int
    seconds: float  # training: from the first step done to the last
    final: list[dict]
    diverged: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    startup_s: float | None = None  # from the call to the first step done (compilation included)


class _NoLock:
    """The lock of a process that does not own the run directory (processes other than 0)."""

    def acquire(self) -> None:
        """Nothing: process 0 holds RUN_DIR/.lock for the whole job."""

    def release(self) -> None:
        """Nothing to release."""


def train_run(recipe: Recipe, out: str, analyses: AnalysisFactory, progress=None,
              resume: bool = True, source: str = "recipe", model: Any = None) -> TrainResult:
    """Train the full network and its Taylorized models in lockstep, writing the run directory.

    An existing run directory is continued from its newest intact checkpoint; with
    `resume=False` it is started over (its results deleted once the new run is built).
    `analyses(context)` gives the optional measurements the recipe asks for; `model` is the
    caller's own network object, when the recipe does not name one by import path.
    """
    progress = progress or QuietProgress()
    started = time.monotonic()
    cache = compile_cache.enable(recipe)
    # float64 runs switch JAX's x64 mode on for themselves only, not for the caller's process
    with signals.watching(), jax.enable_x64(recipe.train.precision == "float64"), \
            compile_cache.unreadable_entries_said_once(cache):
        primary = processes.is_primary()
        run = RunDir(out) if primary else ReadOnlyRunDir(out)
        existing = run.check_usable() == "run"
        if existing and resume:
            run.read_recipe()  # a run without its recipe is refused before data is loaded
        ds = data_lib.load_for_recipe(recipe)
        recipe = data_lib.with_data_stats(recipe, ds)  # written into recipe.yaml, as run
        changes = check_same_recipe(run, recipe) if existing and resume else []
        check_batch(recipe, ds, source)
        setup = build_setup(recipe, ds, model)  # the network built and inspected once per run
        check_fits(setup, source)
        _stop_if_asked("loading the data")
        run.prepare()
        lock = FolderLock(run.path) if primary else _NoLock()
        lock.acquire()
        try:
            if not existing:  # the marker first: everything after is written into a run
                run.create(run_info(setup))
            return _Training(setup, run, progress, analyses, started).go(existing, resume,
                                                                         changes)
        finally:
            lock.release()


def _stop_if_asked(phase: str) -> None:
    if signals.asked():
        raise Stopped(None, f"signal received while {phase}, before the first step; nothing "
                            f"to save; rerun the same command to start")


class _Training:
    """One run of the loop: its engine on the devices, checkpoints, tables and clock."""

    def __init__(self, setup: Setup, run: RunDir, progress, analyses: AnalysisFactory,
                 started: float):
        self.setup, self.run, self.progress, self.analyses = setup, run, progress, analyses
        self.recipe = recipe = setup.recipe
        self.started = started
        self.mesh = None if recipe.train.split_models else data_mesh()
        self.engine = dataclasses.replace(setup.engine, batch_sharding=batch_sharding(self.mesh))
        spe = self.engine.steps_per_epoch
        self.total = recipe.train.epochs * spe
        self.schedule = make_schedule(recipe.optim, spe, recipe.train.epochs)
        self.points = evaluation_steps(recipe, spe)
        self.saves = checkpoint_steps(recipe, spe)
        self.notes: list[str] = []
        self.ckpts = self._checkpoints()
        self.wall_base = 0.0  # seconds the run had taken before this process (a resume)
        self.clock = time.monotonic()
        self.log = None  # TensorBoard, when the recipe asks (process 0 only)

    def _checkpoints(self) -> Checkpoints:
        spe = self.engine.steps_per_epoch
        c = self.recipe.checkpoint
        return Checkpoints(self.run.checkpoints_path, c.keep, [e * spe for e in c.keep_epochs],
                           primary=processes.is_primary())

    def wall_time(self) -> float:
        """Seconds since the run began, across resumes."""
        return self.wall_base + time.monotonic() - self.clock

    def go(self, existing: bool, resume: bool, changes: list[str]) -> TrainResult:
        """Restore or start, then train to the end."""
        try:
            found = self._restore() if existing and resume else None
            if found is not None:
                start, state, meta = found
                self.ckpts.delete_after(start)
                self.wall_base = float(meta.get("wall_time", 0.0))
                if changes:
                    record_changes(self.run, self.recipe, start, changes)
            else:
                start, meta = self.engine.start_step, {}
                state = initial_state(self.setup)  # built before anything is deleted
                _check_finite_start(self.setup, state)
                _stop_if_asked("building the models")
                if existing and not resume:
                    self.ckpts.close()
                    self.run.clear_results()
                    self.ckpts = self._checkpoints()  # orbax lists the steps when it opens
                processes.barrier("cleared")  # no process reads checkpoints process 0 deletes
                self.run.create(run_info(self.setup))
                self.run.write_recipe(dump_recipe(self.recipe))
            return self._loop(start, state, found is not None, meta)
        finally:
            self.progress.close()
            with signals.interrupts_deferred():
                if self.log is not None:
                    self.log.close()
                self.ckpts.close()

    def _restore(self):
        found = self.ckpts.restore_latest(self.setup.abstract_state)
        for line in self.ckpts.skipped:
            self.notes.append(f"{line}; resumed from an earlier checkpoint")
            print(f"taylorcli: warning: {line}; resuming from an earlier one", file=sys.stderr)
        return found

    def _loop(self, start: int, state, resumed: bool, meta: dict) -> TrainResult:
        recipe, engine, run, mesh = self.recipe, self.engine, self.run, self.mesh
        spe = engine.steps_per_epoch
        step_fn = jax.jit(make_train_step(engine, recipe.seed), donate_argnums=0)
        state = replicate(state, mesh)
        ds = self.setup.data
        train_x, train_y = replicate((jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)), mesh)
        evaluator = Evaluator(engine, ds, recipe.eval.batch_size, state)
        if recipe.train.split_models:
            from ..engine.split_models import split_models

            step_fn, state, evaluator = split_models(engine, recipe.seed, state, evaluator)
        if (recipe.spawn.children >= 2 or recipe.eval.kernel_n or recipe.eval.closed_form) \
                and jax.process_count() > 1:
            raise RecipeError("eval.kernel_n, eval.closed_form and spawn children run in one "
                              "process; run them without srun's several tasks")
        extra = self.analyses(RunContext(self.setup, engine, evaluator, run, self.points,
                                         self.schedule))
        tables = Tables(run, [("metrics.csv", METRICS_COLUMNS), ("layers.csv", LAYERS_COLUMNS)]
                        + [(a.file, a.columns) for a in extra])
        if resumed:
            tables.restore(meta.get("tables"), start, spe)
        if recipe.log.tensorboard and processes.is_primary():
            from .tensorboard_log import TensorBoardLog

            self.log = TensorBoardLog(run.folder, dump_recipe(recipe), self.schedule,
                                      recipe.log.every_steps, start, resumed)
        self.progress.start(self.total, spe, engine.names, first_step=start)
        t0, perm, last, startup = time.monotonic(), None, {}, None
        for step in range(start, self.total + 1):
            # A checkpoint at `start` was taken after that step's evaluation and saves.
            resumed_here = resumed and step == start
            if step in self.points and not resumed_here:
                state = self._evaluate(state, step, evaluator, tables, extra)
            # A finished run has nothing to requeue; several processes stop at the same step.
            stopping = step < self.total and processes.agree_to_stop(signals.asked(), step)
            if not resumed_here and (self.saves(step) or stopping):
                with signals.interrupts_deferred():  # never cut short by the watchdog
                    self.ckpts.save(step, state, {"step": step, "tables": tables.fingerprints(),
                                                  "wall_time": self.wall_time()})
            if stopping:
                with signals.interrupts_deferred():
                    self.ckpts.wait()
                raise Stopped(step)
            if step == self.total:
                break
            if perm is None or step % spe == 0:
                perm = replicate(epoch_permutations(engine, recipe.seed, step // spe,
                                                    len(ds.train_y)), mesh)
            state, last = step_fn(state, perm, train_x, train_y)
            if startup is None:  # once: the time to the first step, compilation included
                jax.block_until_ready(last)
                startup = time.monotonic() - self.started
                t0 = time.monotonic()
                signals.responsive()  # from here the loop answers a stop signal itself
                self.progress.compiled(step + 1, startup)
            self.progress.step(step + 1, _if_ready(last))
            if self.log is not None:
                self.log.step(step + 1, last)
        seconds = time.monotonic() - t0
        self.progress.finish(_done_line(start, self.total, seconds, startup, run.path))
        metrics = tables.rows["metrics.csv"]
        return TrainResult(run, self.total, seconds, metrics[-len(engine.names):],
                           diverged_models(metrics), self.notes, startup)

    def _evaluate(self, state, step: int, evaluator, tables: Tables, extra):
        recipe, engine = self.recipe, self.engine
        epoch = step / engine.steps_per_epoch
        rows, layer_rows, logits = evaluator(state, step, epoch, float(self.schedule(step)))
        wall = round(self.wall_time(), 3)
        for r in rows:
            r["wall_time"] = wall
        flags = {r["model"]: jnp.asarray(r["diverged"]) for r in rows}
        state = replicate(state.replace(stats=zero_stats(engine), diverged=flags), self.mesh)
        tables.extend("metrics.csv", rows)
        tables.extend("layers.csv", layer_rows)
        if recipe.eval.save_logits:
            self.run.write_step_arrays("logits", step, logits)
        point = Point(step, epoch, logits)
        for analysis in extra:
            tables.extend(analysis.file, analysis(state, point))
        if trains_subset(recipe):  # what report needs to merge the parts
            self.run.write_step_arrays("params", step, {
                n: flat_displacement(p, state.theta0) for n, p in state.params.items()})
        self.progress.evaluation(step, epoch, rows)
        if self.log is not None:
            self.log.evaluation(step, rows)
        if any(r["diverged"] for r in rows if r["model"] == FULL):
            raise FullDiverged(f"the full network diverged by step {step} (epoch {epoch:g}): "
                               f"its loss or parameters are not finite; see "
                               f"{self.run.metrics_path}")
        return state


def _check_finite_start(setup: Setup, state) -> None:
    """A network whose logits at θ0 are not finite on real training images cannot train (an
    input too small for it, a division by zero): say so before step 0, not as a divergence."""
    ds = setup.data
    x = data_lib.standardize(jnp.asarray(ds.train_x[:8]), mean=ds.mean, std=ds.std)
    logits = setup.network.apply(state.params[FULL] if FULL in state.params else state.theta0,
                                 x)
    if not bool(jnp.all(jnp.isfinite(logits))):
        raise ModelError(f"key model.arch: {setup.network.label} gives non-finite logits at "
                         f"initialization on the training images (shape "
                         f"{tuple(ds.train_x.shape[1:])}); is the input too small for it, or "
                         f"does it divide by zero?")


def _done_line(start: int, total: int, seconds: float, startup: float | None, path) -> str:
    if startup is None:
        return f"done: nothing left to train (step {total}); results in {path}"
    steps = total - start
    rate = f", {(steps - 1) / seconds:.1f} steps/s" if seconds > 0 and steps > 1 else ""
    return (f"done: trained steps {start}..{total}; starting (data, model, compilation) took "
            f"{startup:.1f} s, training {seconds:.1f} s{rate}; results in {path}")


def _if_ready(tree):
    """A function giving the step's statistics on the host if the device has computed them,
    else None: the progress display never makes the loop wait for the device."""

    def latest():
        leaves = jax.tree.leaves(tree)
        if not all(getattr(x, "is_ready", lambda: True)() for x in leaves):
            return None
        return jax.device_get(tree)

    return latest


def run_info(setup: Setup) -> dict:
    """run.json: what made this run and what the report needs without building its model."""
    try:
        version = metadata.version("taylorcli")
    except metadata.PackageNotFoundError:
        version = "unknown"
    spec = setup.spec
    return {
        "taylorcli": version,
        "kind": "spawn" if setup.recipe.spawn.parent is not None else "train",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": setup.parameters,
        "model": setup.network.kind,
        "dataset": {"name": spec.name, "image_shape": list(spec.image_shape),
                    "num_classes": spec.num_classes, "train_size": spec.train_size,
                    "test_size": spec.test_size, "mean": list(spec.mean), "std": list(spec.std)},
        "resumed_with": [],
    }


def diverged_models(metrics: list[dict]) -> dict[str, float]:
    """Taylorized models marked diverged, with the first epoch at which they were."""
    first: dict[str, float] = {}
    for row in metrics:
        if row["diverged"] and row["model"] != FULL:
            first.setdefault(row["model"], row["epoch"])
    return first
