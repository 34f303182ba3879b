"""The training loop: recipe → data + models → lockstep engine → run directory, resumable.

A run survives clusters: it checkpoints on a schedule and on SIGTERM/SIGUSR1, a second
`train` on the same directory continues from the newest intact checkpoint, and a run killed
at any moment and resumed writes the same tables, value for value, as one that was never
interrupted (all randomness derives from the seed and the step number; the running training
statistics live in the checkpointed state; the rows come back from the run's own tables, cut
at the restored step and checked against the digests the checkpoint recorded).

Nothing is deleted before the new run has been validated and built, and only what taylorcli
wrote for the run (see run/directory.py).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata

import jax
import jax.numpy as jnp

from .. import data as data_lib
from ..engine import compile_cache, processes
from ..engine.costs import check_fits
from ..engine.devices import batch_sharding, check_batch, data_mesh, replicate
from ..engine.evaluation import Evaluator
from ..engine.lockstep import FULL, build_engine, epoch_permutations, init_state, \
    make_train_step, spawn_step, zero_stats
from ..engine.optimizer import make_schedule
from ..errors import FullDiverged, RecipeError, RunDirError, Stopped
from ..models import count_params
from ..recipe import STORAGE_KEYS, Recipe, dump_recipe, recipe_to_dict
from . import signals
from .analysis import AnalysisFactory, Point, RunContext, no_analyses
from .checkpoints import Checkpoints
from .directory import LAYERS_COLUMNS, METRICS_COLUMNS, NoLock, ReadOnlyRunDir, RunDir, \
    RunLock, digest, flat_displacement, rows_until, table_text, trains_subset
from .progress import QuietProgress
from .start import initial_state

# Recipe keys a resumed run may change: where data and checkpoints live, how and when it
# evaluates, how models are placed on devices. Each change is recorded in run.json.
RESUMABLE_CHANGES = STORAGE_KEYS + ("eval.every_epochs", "eval.steps")


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports back."""

    run_dir: RunDir
    steps: int
    seconds: float
    final: list[dict]
    diverged: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    startup_s: float | None = None  # from train() to the first step done (compilation included)


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


def checkpoint_steps(recipe: Recipe, steps_per_epoch: int):
    """Whether the state is checkpointed after a step: the intervals, the kept epochs, the end.

    A predicate, not a set: a run of a billion steps checkpointed every few steps must not
    hold every checkpoint step in memory.
    """
    total = recipe.train.epochs * steps_per_epoch
    c = recipe.checkpoint
    kept = {e * steps_per_epoch for e in c.keep_epochs}
    first = spawn_step(recipe, steps_per_epoch)
    epoch_steps = c.every_epochs * steps_per_epoch

    def due(step: int) -> bool:
        if step < first:
            return False
        return (step == total or step in kept or (0 < step and step % epoch_steps == 0)
                or bool(c.every_steps and 0 < step and step % c.every_steps == 0))

    return due


def train(recipe: Recipe, out: str, progress=None, resume: bool = True, source: str = "recipe",
          analyses: AnalysisFactory = no_analyses) -> TrainResult:
    """Train the full network and its Taylorized models in lockstep, writing the run directory.

    An existing run directory is continued from its newest intact checkpoint; with
    `resume=False` it is started over (its results deleted once the new run is built).
    `analyses(context)` gives the optional measurements the recipe asks for.
    """
    progress = progress or QuietProgress()
    started = time.monotonic()
    compile_cache.enable(recipe)
    # float64 runs switch JAX's x64 mode on for themselves only, not for the caller's process
    with signals.watching(), jax.enable_x64(recipe.train.precision == "float64"):
        primary = processes.is_primary()
        run = RunDir(out) if primary else ReadOnlyRunDir(out)
        existing = run.check_usable() == "run"
        if existing and resume:
            run.read_recipe()  # a run without its recipe is refused before data is loaded
        ds = data_lib.load_for_recipe(recipe)
        recipe = data_lib.with_data_stats(recipe, ds)  # written into recipe.yaml, as run
        changes = check_same_recipe(run, recipe) if existing and resume else []
        check_batch(recipe, ds, source)
        spec = data_lib.spec_of(ds)
        check_fits(recipe, spec, source)
        _stop_if_asked("loading the data")
        run.prepare()
        lock = RunLock(run.path) if primary else NoLock()
        lock.acquire()
        try:
            return _train(recipe, run, ds, spec, progress, existing, resume, changes, analyses,
                          started)
        finally:
            lock.release()


def _stop_if_asked(phase: str) -> None:
    if signals.asked():
        raise Stopped(None, f"signal received while {phase}, before the first step; nothing "
                            f"to save; rerun the same command to start")


def _train(recipe: Recipe, run: RunDir, ds, spec, progress, existing: bool, resume: bool,
           changes: list[str], analyses: AnalysisFactory, started: float) -> TrainResult:
    mesh = None if recipe.train.split_models else data_mesh()
    engine = dataclasses.replace(build_engine(recipe, spec), batch_sharding=batch_sharding(mesh))
    spe = engine.steps_per_epoch
    total = recipe.train.epochs * spe
    schedule = make_schedule(recipe.optim, spe, recipe.train.epochs)
    points = evaluation_steps(recipe, spe)
    saves = checkpoint_steps(recipe, spe)
    notes: list[str] = []
    ckpts = Checkpoints(run.checkpoints_path, recipe.checkpoint.keep,
                        [e * spe for e in recipe.checkpoint.keep_epochs],
                        primary=processes.is_primary())
    try:
        found = None
        if existing and resume:
            like = jax.eval_shape(lambda: init_state(engine, recipe, spec))  # same layout
            found = ckpts.restore_latest(like)
            for line in ckpts.skipped:
                notes.append(f"{line}; resumed from an earlier checkpoint")
                print(f"taylorcli: warning: {line}; resuming from an earlier one", file=sys.stderr)
        if found is not None:
            start, state, meta = found
            ckpts.delete_after(start)
            if changes:
                _record_changes(run, recipe, start, changes)
        else:
            start, meta = spawn_step(recipe, spe), {}
            state = initial_state(engine, recipe, spec, ds)  # built before anything is deleted
            _stop_if_asked("building the models")
            if existing and not resume:
                run.clear_results()
            processes.barrier("cleared")  # no process reads checkpoints process 0 deletes
            run.create(run_info(recipe, spec, state))
            run.write_recipe(dump_recipe(recipe))
        step_fn = jax.jit(make_train_step(engine, recipe.seed), donate_argnums=0)
        state = replicate(state, mesh)
        train_x, train_y = replicate((jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)), mesh)
        evaluator = Evaluator(engine, ds, recipe.eval.batch_size, state)
        if recipe.train.split_models:
            from ..engine.split_models import split_models

            step_fn, state, evaluator = split_models(engine, recipe.seed, state, evaluator)
        if (recipe.spawn.children >= 2 or recipe.eval.kernel_n or recipe.eval.closed_form) \
                and jax.process_count() > 1:
            raise RecipeError("eval.kernel_n, eval.closed_form and spawn children run in one "
                              "process; run them without srun's several tasks")
        extra = analyses(RunContext(recipe, ds, spec, engine, evaluator, run, points, schedule))
        tables = Tables(run, [("metrics.csv", METRICS_COLUMNS), ("layers.csv", LAYERS_COLUMNS)]
                        + [(a.file, a.columns) for a in extra])
        if found is not None:
            tables.restore(meta.get("tables"), start, spe)
        progress.start(total, spe, engine.names, first_step=start)
        t0 = time.monotonic()
        perm, last, startup = None, {}, None
        for step in range(start, total + 1):
            # A checkpoint at `start` was taken after that step's evaluation and saves.
            resumed_here = found is not None and step == start
            if step in points and not resumed_here:
                epoch = step / spe
                rows, layer_rows, logits = evaluator(state, step, epoch, float(schedule(step)))
                flags = {r["model"]: jnp.asarray(r["diverged"]) for r in rows}
                state = replicate({**state, "stats": zero_stats(engine), "diverged": flags}, mesh)
                tables.extend("metrics.csv", rows)
                tables.extend("layers.csv", layer_rows)
                if recipe.eval.save_logits:
                    run.write_step_arrays("logits", step, logits)
                point = Point(step, epoch, logits)
                for analysis in extra:
                    tables.extend(analysis.file, analysis(state, point))
                if trains_subset(recipe):  # what report needs to merge the parts
                    run.write_step_arrays("params", step, {
                        n: flat_displacement(p, state["theta0"]) for n, p in state["params"].items()})
                progress.evaluation(step, epoch, rows)
                if any(r["diverged"] for r in rows if r["model"] == FULL):
                    raise FullDiverged(f"the full network diverged by step {step} (epoch "
                                       f"{epoch:g}): its loss or parameters are not finite; "
                                       f"see {run.metrics_path}")
            # A finished run has nothing to requeue; several processes stop at the same step.
            stopping = step < total and processes.agree_to_stop(signals.asked(), step)
            if not resumed_here and (saves(step) or stopping):
                ckpts.save(step, state, {"step": step, "tables": tables.fingerprints()})
            if stopping:
                with signals.interrupts_deferred():
                    ckpts.wait()
                raise Stopped(step)
            if step == total:
                break
            if perm is None or step % spe == 0:
                perm = replicate(epoch_permutations(engine, recipe.seed, step // spe,
                                                    len(ds.train_y)), mesh)
            state, last = step_fn(state, perm, train_x, train_y)
            if startup is None:  # once: the time to the first step, compilation included
                jax.block_until_ready(last)
                startup = time.monotonic() - started
            progress.step(step + 1, lambda: values_if_ready(last))
    finally:
        progress.close()
        with signals.interrupts_deferred():
            ckpts.close()
    seconds = time.monotonic() - t0
    began = f" (first step {startup:.1f} s after the start)" if startup is not None else ""
    progress.finish(f"done: steps {start}..{total} in {seconds:.1f} s{began}; results in "
                    f"{run.path}")
    metrics = tables.rows["metrics.csv"]
    return TrainResult(run, total, seconds, metrics[-len(engine.names):],
                       diverged_models(metrics), notes, startup)


def values_if_ready(tree):
    """The step's statistics on the host if the device has computed them, else None: the
    progress display never makes the loop wait for the device between evaluations."""
    leaves = jax.tree.leaves(tree)
    if not all(getattr(x, "is_ready", lambda: True)() for x in leaves):
        return None
    return jax.device_get(tree)


class Tables:
    """The run's CSV tables as rows in memory, each rewritten whole (atomically) when it grows."""

    def __init__(self, run: RunDir, tables: list[tuple[str, list[str]]]):
        self.run = run
        self.columns = dict(tables)
        self.rows: dict[str, list[dict]] = {name: [] for name in self.columns}
        self.texts: dict[str, str] = {}

    def extend(self, name: str, rows: list[dict]) -> None:
        """Add rows to a table and write it."""
        self.rows[name] += rows
        self.texts[name] = self.run.write_table(name, self.rows[name], self.columns[name])

    def fingerprints(self) -> dict[str, dict]:
        """Each written table's row count and digest, for the checkpoint."""
        return {name: {"rows": len(self.rows[name]), "digest": digest(text)}
                for name, text in self.texts.items()}

    def restore(self, recorded: dict | None, step: int, steps_per_epoch: int) -> None:
        """The rows up to `step` from the run's own files, checked against the checkpoint's digests."""
        for name, columns in self.columns.items():
            rows = self.run.read_rows(name, columns)
            path = self.run.path / name
            expected = (recorded or {}).get(name)
            if rows is None:
                if expected:
                    raise RunDirError(f"{path}: missing; its rows up to step {step} cannot be "
                                      f"rebuilt from the checkpoint; restore the file, or start "
                                      f"over with --no-resume (it deletes this run's results "
                                      f"and checkpoints)")
                continue
            cut = rows_until(rows, epoch=step / steps_per_epoch) if "step" not in columns \
                else rows_until(rows, step=step)
            text = table_text(cut, columns)
            if expected and (len(cut) != expected["rows"] or digest(text) != expected["digest"]):
                raise RunDirError(f"{path}: differs from what the run had written by step "
                                  f"{step} (damaged or edited); restore it, or start over with "
                                  f"--no-resume (it deletes this run's results and checkpoints)")
            self.rows[name] = cut
            if expected:
                self.texts[name] = text


def run_info(recipe: Recipe, spec, state) -> dict:
    """run.json: what made this run and what the report needs without building its model."""
    try:
        version = metadata.version("taylorcli")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "taylorcli": version,
        "kind": "spawn" if recipe.spawn.parent is not None else "train",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": count_params(state["theta0"]),
        "dataset": {"name": spec.name, "image_shape": list(spec.image_shape),
                    "num_classes": spec.num_classes, "train_size": spec.train_size,
                    "test_size": spec.test_size, "mean": list(spec.mean), "std": list(spec.std)},
        "resumed_with": [],
    }


def _record_changes(run: RunDir, recipe: Recipe, step: int, changes: list[str]) -> None:
    """A resumed run with changed storage or evaluation settings: say so in run.json and recipe.yaml."""
    info = run.read_info()
    info.setdefault("resumed_with", []).append({"step": step, "changes": changes})
    run.create(info)
    run.write_recipe(dump_recipe(recipe))


def check_same_recipe(run: RunDir, recipe: Recipe) -> list[str]:
    """Refuse to continue a run with another recipe; the allowed changes, as 'key: old -> new'."""
    saved = run.read_recipe()
    diffs = list(_differences(recipe_to_dict(recipe), recipe_to_dict(saved)))
    refused = [d for d in diffs if not d[0].startswith(RESUMABLE_CHANGES)]
    if refused:
        shown = "; ".join(f"{k}: {old!r} there, {new!r} here" for k, new, old in refused[:3])
        raise RunDirError(f"--out {run.path}: holds a run of a different recipe ({shown}); "
                          f"choose another --out, or pass --no-resume to start this one over "
                          f"(it deletes the run's results and checkpoints)")
    return [f"{k}: {old!r} -> {new!r}" for k, new, old in diffs]


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
