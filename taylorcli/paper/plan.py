"""A manifest resolved into runs: each run's recipe (with the scale's and the data's `--set`
values), the models it trains, its steps, and — for `--plan` — its cost from the same compiled
analysis as `taylorcli train --dry-run` (engine/costs.py)."""

from __future__ import annotations

import csv
import io
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, PaperError
from ..names import FULL, child_name, model_names, spawned_name
from ..recipe import Recipe, load_named_recipe, resolve_recipe, setting_key
from .manifest import CIFAR, Manifest, RunEntry

DEFAULT_TFLOPS = 20.0  # an assumption: sustained lockstep throughput of one GPU, TFLOP/s
# Keys that change what a run learns but not its compiled step's cost: runs differing only in
# them share one compilation (the step's shape and program stay the same).
COST_FREE = ("name", "seed", "optim.lr", "optim.schedule", "optim.decay_epochs",
             "optim.decay_factor", "train.epochs", "eval.", "checkpoint.")
PLAN_COLUMNS = ["run", "kind", "recipe", "overrides", "models", "epochs", "steps", "params",
                "flops_per_step", "flops_total", "memory_gib", "gpu_hours", "evaluations",
                "compile_s", "step_s", "eval_s", "est_wall_s"]
TIMED_STEPS = 10  # lockstep steps timed per setting, after one that compiles


@dataclass
class PlanRun:
    """One run of a plan: what trains, where it is written, and what it costs."""

    name: str  # cnnthin, or SWEEP/atE for a spawned run
    kind: str  # train | spawn
    folder: str  # the run directory, relative to the plan's folder
    recipe_arg: str  # the RECIPE argument (train), or the parent run's name (spawn)
    overrides: tuple[str, ...]
    recipe: Recipe  # train: the run's recipe; spawn: the recipe whose step it costs
    feeds: tuple[str, ...] = ()
    at: float | None = None
    orders: tuple[int, ...] = ()
    children: int = 0
    sweep: str | None = None  # a spawned run's sweep folder
    setting: str = ""  # the manifest's name of the run, the same for each of its seeds
    seed: int | None = None  # set by the manifest's seeds (None: the recipe's own)
    models: list[str] = field(default_factory=list)
    epochs: float = 0.0
    steps: int = 0
    params: int | None = None
    flops_per_step: float | None = None
    memory_bytes: int | None = None
    evaluations: int = 0
    compile_s: float | None = None  # measured here: compiling the step and the evaluation
    step_s: float | None = None  # measured here: seconds per lockstep step
    eval_s: float | None = None  # measured here: seconds per evaluation point

    @property
    def est_wall_s(self) -> float | None:
        """Estimated wall seconds here: compilation + steps x step_s + evaluations x eval_s."""
        if self.step_s is None:
            return None
        return (self.compile_s or 0.0) + self.steps * self.step_s + \
            self.evaluations * (self.eval_s or 0.0)

    @property
    def stage(self) -> int:
        """0 for train runs, 1 for spawned runs (they need their parent finished)."""
        return 0 if self.kind == "train" else 1

    @property
    def slug(self) -> str:
        """The run's name as a file name (its log)."""
        return self.name.replace("/", "_")

    @property
    def flops_total(self) -> float | None:
        """FLOPs of all its training steps (evaluations not counted)."""
        return None if self.flops_per_step is None else self.flops_per_step * self.steps

    def command(self, out: Path, recipe_path: str | None = None) -> list[str]:
        """The `taylorcli train`/`spawn` command line that runs it (what a SLURM task runs)."""
        if self.kind == "train":
            sets = [a for s in self.overrides for a in ("--set", s)]
            return ["taylorcli", "train", recipe_path or self.recipe_arg, *sets,
                    "--out", str(out / self.folder)]
        parent = self.recipe_arg
        return ["taylorcli", "spawn", str(out / parent), "--at", f"{self.at:g}",
                "--order", ",".join(map(str, self.orders)), "--children", str(self.children),
                "--out", str(out / self.sweep)]

    def shell(self, out: Path) -> str:
        """command() quoted for a shell."""
        return " ".join(shlex.quote(a) for a in self.command(out))


@dataclass
class Plan:
    """Every run of a manifest at one scale, train runs first."""

    manifest: Manifest
    runs: list[PlanRun]
    data: str | None = None
    tflops: float = DEFAULT_TFLOPS

    def gpu_hours(self, run: PlanRun) -> float | None:
        """The run's training FLOPs at `tflops`, in hours."""
        total = run.flops_total
        return None if total is None else total / (self.tflops * 1e12) / 3600

    def by_name(self) -> dict[str, PlanRun]:
        """Runs by name."""
        return {r.name: r for r in self.runs}


def data_overrides(data: str | None) -> list[str]:
    """`--data PATH` as the CIFAR runs' --set: an archive (file or extracted folder) or a TFDS
    data_dir, checked to exist first."""
    if data is None:
        return []
    p = Path(data).expanduser()
    if not p.exists():
        raise PaperError(f"--data {data}: no such file or folder; expected the CIFAR python "
                         f"archive (cifar-10-python.tar.gz), its extracted folder, or a TFDS "
                         f"data_dir")
    try:
        if p.is_dir():
            names = {e.name for e in p.iterdir()}
        else:
            with open(p, "rb"):
                names = set()
    except OSError as e:
        raise PaperError(f"--data {data}: cannot read ({e.strerror or e})") from None
    if p.is_file() or {"data_batch_1", "cifar-10-batches-py", "cifar-100-python", "train"} & names:
        return [f"data.archive={p.resolve()}"]
    return [f"data.data_dir={p.resolve()}"]


def _recipe(entry: RunEntry, sets: list[str], source: str) -> Recipe:
    try:
        return load_named_recipe(entry.recipe, sets)
    except InputError as e:
        raise PaperError(f"{source}: run {entry.name}: {e}") from None


def _models(recipe: Recipe) -> list[str]:
    if recipe.models is not None:
        return list(recipe.models)
    return model_names(recipe.taylor.orders)


def _steps_per_epoch(recipe: Recipe) -> int:
    from ..data import recipe_spec
    from ..engine.lockstep import steps_per_epoch

    return steps_per_epoch(recipe, recipe_spec(recipe).train_size)


def build_plan(manifest: Manifest, data: str | None = None,
               tflops: float = DEFAULT_TFLOPS) -> Plan:
    """Resolve every run of the manifest (recipes validated, `--data` checked); costs not yet."""
    from ..run.schedule import evaluation_steps

    if not (isinstance(tflops, (int, float)) and math.isfinite(tflops) and tflops > 0):
        raise PaperError(f"--tflops {tflops}: expected a number > 0 (TFLOP/s per GPU)")
    data_sets = data_overrides(data)
    runs: list[PlanRun] = []
    trains: dict[str, PlanRun] = {}
    for entry in manifest.runs:
        if entry.spawn is not None:
            continue
        base = _recipe(entry, list(entry.overrides), manifest.source)
        sets = list(entry.overrides)
        if base.data.dataset in CIFAR:
            sets += manifest.small_cifar if manifest.scale == "small" else data_sets
        if manifest.scale == "small":
            sets += manifest.small_runs.get(entry.setting, ())
        if entry.seed is not None:  # last, so that nothing before it sets another seed
            sets = [s for s in sets if s != f"seed={entry.seed}"] + [f"seed={entry.seed}"]
        recipe = _recipe(entry, sets, manifest.source)
        if manifest.path is not None:  # a manifest file's own recipes are named from its folder
            resolved = resolve_recipe(entry.recipe)
            arg = str(Path(str(resolved)).resolve()) if isinstance(resolved, Path) else entry.recipe
        else:
            arg = entry.recipe
        spe = _steps_per_epoch(recipe)
        run = PlanRun(entry.name, "train", entry.name, arg, tuple(sets), recipe, entry.feeds,
                      setting=entry.setting, seed=entry.seed,
                      models=_models(recipe), epochs=float(recipe.train.epochs),
                      steps=recipe.train.epochs * spe,
                      evaluations=len(evaluation_steps(recipe, spe)))
        runs.append(run)
        trains[entry.name] = run
    for entry in manifest.runs:
        sp = entry.spawn
        if sp is None:
            continue
        parent = trains[sp.parent]
        epochs = parent.recipe.train.epochs
        late = [e for e in sp.at if e > epochs]
        if late:
            raise PaperError(f"{manifest.source}: run {entry.name}: spawn epoch {late[0]:g} is "
                             f"after the parent's last epoch ({epochs})")
        cost = _recipe(RunEntry(entry.name, parent.recipe_arg),
                       list(parent.overrides) + [f"taylor.orders={list(sp.orders)}",
                                                 "models=null", f"spawn.children={sp.children}"],
                       manifest.source)
        spe = _steps_per_epoch(parent.recipe)
        points = evaluation_steps(parent.recipe, spe)
        for e in sp.at:
            models = [FULL, *(spawned_name(e, k) for k in sp.orders),
                      *(child_name(i) for i in range(sp.children))]
            runs.append(PlanRun(f"{entry.name}/at{e:g}", "spawn", f"{entry.name}/at{e:g}",
                                parent.name, (), cost, entry.feeds, at=e, orders=sp.orders,
                                children=sp.children, sweep=entry.name, models=models,
                                setting=f"{entry.setting}/at{e:g}", seed=entry.seed,
                                epochs=epochs - e, steps=round((epochs - e) * spe),
                                evaluations=1 + sum(p > round(e * spe) for p in points)))
    return Plan(manifest, runs, data, float(tflops))


def _per_setting(plan: Plan, measure, say, report=None):
    """(run, measure(run.recipe), first) for each run, measured once per distinct setting."""
    seen: dict[str, tuple] = {}
    for run in plan.runs:
        key = setting_key(run.recipe, ignore=COST_FREE)
        first = key not in seen
        if first:
            if report is not None:
                report(say(run))
            seen[key] = measure(run.recipe)
        yield run, seen[key], first


def add_costs(plan: Plan, report=None) -> Plan:
    """Compile each distinct setting's lockstep step once and record parameters, FLOPs, memory."""
    import jax

    from ..engine.costs import step_cost
    from ..engine.setup import build_setup

    def cost(recipe):
        with jax.enable_x64(recipe.train.precision == "float64"):
            c = step_cost(build_setup(recipe))
        return c.params, c.flops, c.peak_bytes

    say = lambda run: f"compiling {run.name}'s lockstep step ({', '.join(run.models)}) ..."
    for run, measured, _ in _per_setting(plan, cost, say, report):
        run.params, run.flops_per_step, run.memory_bytes = measured
    return plan


def time_setting(recipe: Recipe, steps: int = TIMED_STEPS) -> tuple[float, float, float]:
    """(compile seconds, seconds per lockstep step, seconds per evaluation) of a recipe, measured
    here on its real data: one step and one evaluation compile, then `steps` steps and one
    evaluation are timed. The analyses (kernels, closed form, children's barriers) are not."""
    import time

    import jax
    import jax.numpy as jnp

    from .. import data as data_lib
    from ..engine.evaluation import Evaluator
    from ..engine.lockstep import epoch_permutations, make_train_step
    from ..engine.setup import build_setup

    with jax.enable_x64(recipe.train.precision == "float64"):
        ds = data_lib.load_for_recipe(recipe)
        setup = build_setup(data_lib.with_data_stats(recipe, ds), ds)
        engine = setup.engine
        state = setup.initial_state()
        step_fn = jax.jit(make_train_step(engine, recipe.seed), donate_argnums=0)
        perm = epoch_permutations(engine, recipe.seed, 0, len(ds.train_y))
        x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
        t0 = time.perf_counter()
        state, last = step_fn(state, perm, x, y)
        jax.block_until_ready(last)
        evaluator = Evaluator(engine, ds, recipe.eval.batch_size, state)
        evaluator(state, 1, 0.0, recipe.optim.lr)
        compiled = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            state, last = step_fn(state, perm, x, y)
        jax.block_until_ready((state, last))
        per_step = (time.perf_counter() - t0) / steps
        t0 = time.perf_counter()
        evaluator(state, steps + 1, 0.0, recipe.optim.lr)
        per_eval = time.perf_counter() - t0
    return compiled, per_step, per_eval


def add_wall_times(plan: Plan, report=None) -> Plan:
    """Each distinct setting's compile, step and evaluation time measured here (time_setting),
    so that every run has an estimated wall time on this machine."""
    say = lambda run: f"timing {run.name}'s lockstep step and evaluation here ..."
    for run, (compile_s, run.step_s, run.eval_s), first in _per_setting(plan, time_setting, say,
                                                                         report):
        run.compile_s = compile_s if first else 0.0  # once per setting: a warm cache after
    return plan


def plan_rows(plan: Plan) -> list[dict]:
    """One row per run, in PLAN_COLUMNS (values as numbers; None where not costed)."""
    rows = []
    for r in plan.runs:
        rows.append({
            "run": r.name, "kind": r.kind,
            "recipe": r.recipe_arg if r.kind == "train" else f"spawn from {r.recipe_arg}",
            "overrides": " ".join(r.overrides) if r.kind == "train" else
            f"--at {r.at:g} --order {','.join(map(str, r.orders))} --children {r.children}",
            "models": "+".join(r.models), "epochs": r.epochs, "steps": r.steps,
            "params": r.params, "flops_per_step": r.flops_per_step,
            "flops_total": r.flops_total,
            "memory_gib": None if r.memory_bytes is None else r.memory_bytes / 2**30,
            "gpu_hours": plan.gpu_hours(r), "evaluations": r.evaluations,
            "compile_s": r.compile_s, "step_s": r.step_s, "eval_s": r.eval_s,
            "est_wall_s": r.est_wall_s})
    return rows


def plan_csv(plan: Plan) -> str:
    """plan.csv's text."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, PLAN_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in plan_rows(plan):
        w.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v)
                    for k, v in row.items()})
    return buf.getvalue()


def totals(plan: Plan) -> dict:
    """Steps, FLOPs and GPU-hours of the whole plan, and its largest run's memory."""
    costed = [r for r in plan.runs if r.flops_total is not None]
    timed = [r.est_wall_s for r in plan.runs if r.est_wall_s is not None]
    return {"runs": len(plan.runs), "steps": sum(r.steps for r in plan.runs),
            "est_wall_s": sum(timed) if timed else None,
            "flops_total": sum(r.flops_total for r in costed) if costed else None,
            "gpu_hours": sum(plan.gpu_hours(r) for r in costed) if costed else None,
            "memory_gib": max((r.memory_bytes for r in costed), default=0) / 2**30
            if costed else None}



_HOST_BYTES: dict[str, int] = {}


def host_bytes(recipe: Recipe) -> int:
    """Bytes a run holds on the host: its training set and its whole state (from abstract
    shapes, nothing compiled), once per distinct setting."""
    key = setting_key(recipe, ignore=COST_FREE)
    if key not in _HOST_BYTES:
        from ..engine.setup import build_setup

        setup = build_setup(recipe)
        images = setup.spec.train_size * math.prod(setup.spec.image_shape)
        _HOST_BYTES[key] = images + setup.state_bytes()[0]
    return _HOST_BYTES[key]
