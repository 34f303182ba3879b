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
from .directory import ReadOnlyRunDir, RunDir
from .progress import QuietProgress
from .resume import check_same_recipe, record_changes
from .schedule import checkpoint_steps, evaluation_steps
from .start import initial_state
from .startup import StartupClock
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
    clock = StartupClock()
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
        clock.mark("data")
        setup = build_setup(recipe, ds, model)  # the network built and inspected once per run
        check_fits(setup, source)
        clock.mark("model")
        _stop_if_asked("loading the data")
        run.prepare()
        lock = FolderLock(run.path) if primary else _NoLock()
        lock.acquire()
        try:
            if not existing:  # the marker first: everything after is written into a run
                run.create(run_info(setup))
                run.write_recipe(dump_recipe(setup.recipe))  # a failed start can be rerun
            return _Training(setup, run, progress, analyses, clock).go(existing, resume, changes)
        finally:
            lock.release()


def _stop_if_asked(phase: str) -> None:
    if signals.asked():
        raise Stopped(None, f"signal received while {phase}, before the first step; nothing "
                            f"to save; rerun the same command to start")


class _Training:
    """One run of the loop: its engine on the devices, checkpoints, tables and clock."""

    def __init__(self, setup: Setup, run: RunDir, progress, analyses: AnalysisFactory,
                 clock: StartupClock):
        self.setup, self.run, self.progress, self.analyses = setup, run, progress, analyses
        self.recipe = recipe = setup.recipe
        self.clock = clock
        self.mesh = None if recipe.train.split_models else data_mesh()
        self.engine = dataclasses.replace(setup.engine, batch_sharding=batch_sharding(self.mesh))
        spe = self.engine.steps_per_epoch
        self.total = recipe.train.epochs * spe
        self.schedule = make_schedule(recipe.optim, spe, recipe.train.epochs)
        self.points = evaluation_steps(recipe, spe)
        self.saves = checkpoint_steps(recipe, spe)
        self.notes: list[str] = []
        self._ckpts = None  # opened on first use: orbax is imported only when a run saves
        self.wall_base = 0.0  # seconds the run had taken before this process (a resume)
        self.wall_start = time.monotonic()
        self.log = None  # TensorBoard, when the recipe asks (process 0 only)

    @property
    def ckpts(self):
        """The run's checkpoints folder (orbax), opened on first use."""
        if self._ckpts is None:
            from .checkpoints import Checkpoints

            spe = self.engine.steps_per_epoch
            c = self.recipe.checkpoint
            self._ckpts = Checkpoints(self.run.checkpoints_path, c.keep,
                                      [e * spe for e in c.keep_epochs],
                                      primary=processes.is_primary())
        return self._ckpts

    def wall_time(self) -> float:
        """Seconds since the run began, across resumes."""
        return self.wall_base + time.monotonic() - self.wall_start

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
                _stop_if_asked("building the models")
                if existing and not resume:
                    if self._ckpts is not None:
                        self._ckpts.close()
                        self._ckpts = None  # orbax lists the steps when it opens
                    self.run.clear_results()
                processes.barrier("cleared")  # no process reads checkpoints process 0 deletes
                self.run.create(run_info(self.setup))
                self.run.write_recipe(dump_recipe(self.recipe))
            return self._loop(start, state, found is not None, meta)
        finally:
            self.progress.close()
            with signals.interrupts_deferred():
                if self.log is not None:
                    self.log.close()
                if self._ckpts is not None:
                    self._ckpts.close()

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
        self.clock.mark("state")
        compiling, perm = None, None
        if not recipe.train.split_models and start < self.total:
            # The step compiles (or loads from the cache) while the first evaluation runs.
            perm = replicate(epoch_permutations(engine, recipe.seed, start // spe,
                                                len(ds.train_y)), mesh)
            compiling = _compile_in_background(step_fn, recipe, state, perm, train_x, train_y)
        if recipe.log.tensorboard and processes.is_primary():
            from .tensorboard_log import TensorBoardLog

            self.log = TensorBoardLog(run.folder, dump_recipe(recipe), self.schedule,
                                      recipe.log.every_steps, start, resumed)
        self.progress.start(self.total, spe, engine.names, first_step=start)
        t0, last, startup = time.monotonic(), {}, None
        for step in range(start, self.total + 1):
            # A checkpoint at `start` was taken after that step's evaluation and saves.
            resumed_here = resumed and step == start
            if step in self.points and not resumed_here:
                if startup is not None:  # the steps before it are the training's, not its
                    jax.block_until_ready(state)
                began = time.monotonic()
                state = self._evaluate(state, step, evaluator, tables, extra)
                if startup is None:
                    self.clock.mark("first evaluation")
                else:
                    self.clock.evaluating += time.monotonic() - began
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
            if compiling is not None:
                step_fn = _compiled_or(step_fn, compiling)
                compiling = None
            state, last = step_fn(state, perm, train_x, train_y)
            if startup is None:  # once: the time to the first step, compilation included
                jax.block_until_ready(last)
                self.clock.mark("first step")
                startup = self.clock.since_launch()
                t0 = time.monotonic()
                signals.responsive()  # from here the loop answers a stop signal itself
                self.progress.compiled(step + 1, startup)
            self.progress.step(step + 1, _if_ready(last))
            if self.log is not None:
                self.log.step(step + 1, last)
        seconds = time.monotonic() - t0
        if startup is not None and processes.is_primary():
            info = run.read_info()
            info.setdefault("timings", []).append(
                self.clock.record(start, self.total - start, seconds))
            run.create(info)
        self.progress.finish(_done_line(start, self.total, seconds, startup, run.path,
                                        self.clock.evaluating))
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
        if step == self.engine.start_step and self.recipe.spawn.parent is None and any(
                r["diverged"] for r in rows if r["model"] == FULL):
            # At θ0 nothing has trained yet: the network itself gives non-finite logits.
            raise ModelError(f"key model.arch: {self.setup.network.label} gives non-finite "
                             f"logits at initialization on the test images (shape "
                             f"{tuple(self.setup.spec.image_shape)}); is the input too small "
                             f"for it, or does it divide by zero?")
        if any(r["diverged"] for r in rows if r["model"] == FULL):
            raise FullDiverged(f"the full network diverged by step {step} (epoch {epoch:g}): "
                               f"its loss or parameters are not finite; see "
                               f"{self.run.metrics_path}")
        return state


def _compile_in_background(step_fn, recipe: Recipe, *args):
    """A thread compiling the step for these arguments' shapes and placement (XLA releases the
    GIL while it compiles, so the first evaluation runs beside it)."""
    from concurrent.futures import ThreadPoolExecutor

    def compile_step():
        # x64 is a thread-local setting: the thread takes the run's precision with it
        with jax.enable_x64(recipe.train.precision == "float64"):
            return step_fn.lower(*args).compile()

    pool = ThreadPoolExecutor(1, thread_name_prefix="taylorcli-compile")
    future = pool.submit(compile_step)
    pool.shutdown(wait=False)
    return future


def _compiled_or(step_fn, future):
    """The step compiled in the background, or the jitted step itself if that did not work."""
    try:
        compiled = future.result()
    except Exception:  # noqa: BLE001 - the jitted step compiles (and says why) on its own
        return step_fn

    def step(*args):
        try:
            return compiled(*args)
        except TypeError:  # arguments placed or typed otherwise than when it was lowered
            return step_fn(*args)

    return step


def _done_line(start: int, total: int, seconds: float, startup: float | None, path,
               evaluating: float = 0.0) -> str:
    if startup is None:
        return f"done: nothing left to train (step {total}); results in {path}"
    steps = total - start
    rate = f", {(steps - 1) / seconds:.1f} steps/s" if seconds > 0 and steps > 1 else ""
    share = f" ({evaluating:.1f} s of it evaluating)" if evaluating else ""
    return (f"done: trained steps {start}..{total}; starting (data, model, compilation) took "
            f"{startup:.1f} s, training {seconds:.1f} s{share}{rate}; results in {path}")


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
