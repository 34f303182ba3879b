"""`python -m taylorcli.bench`: speed of the Taylor-mode engine against nested JVPs and its FLOP bound.

Measured side by side in one process, on synthetic CIFAR-shaped data (sizes adjustable), for a
CNN, a WideResNet and a small vision transformer (`transformer.ViT`, digits-sized inputs):
each order's training step with `taylorize` and with `taylorize_nested`, the full step, the
lockstep step against the sum of the separate steps, XLA's FLOPs of each order's step against
the count derived from its truncation plan (which partial sums each layer supplies) and the
untruncated Taylor-mode bound (5k/3 full steps: 2k+1 forward passes and 3k-1 backward), each
step's tracing and XLA compile time and program size (instructions of the compiled HLO), images
per second, the share of the step spent on data and augmentation, the time a fresh process takes
to its first lockstep step, and the compiled memory of the lockstep step of each Table 1 recipe
at its batch size. Steps and compiles of one setting are interleaved (full, each order, nested,
and with `--compare-taylor` another taylor.py) so that a shared machine's load falls on all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from .. import data as data_lib
from ..engine import lockstep
from ..engine.costs import compiled_flops, step_cost
from ..engine.lockstep import build_engine, fresh_state, initial_params, make_train_step
from ..engine.setup import build_setup
from ..models import build_network, inspect
from ..recipe import load_named_recipe, recipe_from_dict
from ..taylor import truncation_plan
from .step_profile import KINDS, profile_step

TABLE1 = ("cnnthin", "cnnthick", "wrnthin", "wrnthick")  # bundled recipes


@dataclasses.dataclass
class Setting:
    """One architecture at one size, on synthetic data.

    For `vit` (`transformer.ViT`): `width` is the token dimension, `depth` the number of blocks,
    `widen` the number of attention heads; patches are image/4 pixels square (16 tokens).
    """

    arch: str
    depth: int
    width: int
    widen: int
    batch: int
    image: int
    orders: tuple[int, ...]
    channels: int = 3
    pad: int = 4

    def label(self) -> str:
        """Short name, e.g. cnn-4-128 b256 32px."""
        name = {"wrn": f"wrn-{self.depth}-{self.widen}-{self.width}",
                "vit": f"vit-{self.depth}-{self.width}-h{self.widen}"}.get(
            self.arch, f"{self.arch}-{self.depth}-{self.width}")
        return f"{name} b{self.batch} {self.image}px" + ("" if self.channels == 3 else f" {self.channels}ch")

    def model(self) -> dict:
        """The recipe's `model` section."""
        if self.arch == "vit":
            return {"arch": "taylorcli.bench.transformer:ViT",
                    "kwargs": {"dim": self.width, "depth": self.depth, "heads": self.widen,
                               "mlp_dim": 2 * self.width, "patch": max(self.image // 4, 1)}}
        return {"arch": self.arch, "depth": self.depth, "width": self.width, "widen": self.widen}


class Bench:
    """Compiled steps of one setting, timed and costed."""

    def __init__(self, s: Setting, repeats: int):
        self.s, self.repeats = s, repeats
        self.recipe = recipe_from_dict({
            "data": {"dataset": "synthetic", "synthetic_train": 4 * s.batch, "pad": s.pad},
            "model": s.model(),
            "taylor": {"orders": list(s.orders)},
            "train": {"batch_size": s.batch},
            "optim": {"lr": 0.01, "grad_clip": 5.0},
        }, "bench")
        ds = data_lib.load_dataset("synthetic", synthetic_train=4 * s.batch, synthetic_test=8)
        x = ds.train_x[:, : s.image, : s.image, : s.channels]
        self.spec = data_lib.DatasetSpec("synthetic", x.shape[1:], 10, len(x), 8,
                                         ds.mean[: s.channels], ds.std[: s.channels])
        self.train_x, self.train_y = jnp.asarray(x), jnp.asarray(ds.train_y)
        self.perm = jnp.arange(len(x))
        self.network = build_network(self.recipe.model, 10, seed=self.recipe.seed)
        layers = inspect(self.network, self.spec.image_shape, 10)
        self.engine = build_engine(self.recipe, self.spec, self.network, layers)
        self.theta0 = initial_params(self.network, self.recipe.seed, self.spec.image_shape)
        self._compiled = {}

    def state_for(self, engine):
        """A fresh state of the engine at this setting's θ0 (a copy: the step donates it)."""
        return fresh_state(engine, jax.tree.map(jnp.copy, self.theta0))

    def plan(self, order: int) -> list[dict]:
        """Taylor mode's truncation plan of this setting's network at one order."""
        return truncation_plan(self.engine.apply, self.theta0, order,
                               self.train_x[: self.s.batch])

    def engine_for(self, names, nested=False):
        """The lockstep engine restricted to some models."""
        models = tuple(m for m in self.engine.models if m.name in names)
        return dataclasses.replace(self.engine, models=models, nested=nested)

    def compiled(self, engine):
        """The engine's step compiled for this setting's shapes (once per engine), and a state."""
        key = (engine.names, engine.nested)
        if key not in self._compiled:
            self._compiled[key] = self.compile(engine)[0]
        return self._compiled[key], self.state_for(engine)

    def compile(self, engine, taylor=None):
        """Trace and compile the engine's step afresh: (compiled, its figures).

        `taylor`, a module with a `taylorize` (see `load_taylor`), expands the Taylorized models
        in place of this package's own. Figures: `trace_s` (tracing and lowering to StableHLO),
        `compile_s` (XLA), `hlo_ops` (instructions of the compiled HLO module, fused
        computations included) and `hlo_chars` (its text, metadata left out).
        """
        state = self.state_for(engine)
        with _expanding_with(taylor):
            start = time.perf_counter()
            lowered = jax.jit(make_train_step(engine, 0), donate_argnums=0).lower(
                state, self.perm, self.train_x, self.train_y)
            traced = time.perf_counter()
        compiled = lowered.compile()
        done = time.perf_counter()
        return compiled, {"trace_s": traced - start, "compile_s": done - traced,
                          **hlo_size(compiled.as_text())}

    def compile_interleaved(self, variants: dict, rounds: int) -> dict:
        """Compile every variant `rounds` times, round robin: name -> (compiled, figures).

        `variants` maps a name to an engine, or to (engine, taylor module). Figures are medians
        over the rounds, with `compile_range_s` the fastest and slowest compile.
        """
        runs = {name: [] for name in variants}
        compiled = {}
        for _ in range(max(rounds, 1)):
            for name, v in variants.items():
                engine, taylor = v if isinstance(v, tuple) else (v, None)
                compiled[name], figures = self.compile(engine, taylor)
                runs[name].append(figures)
        out = {}
        for name, rs in runs.items():
            times = [r["compile_s"] for r in rs]
            out[name] = (compiled[name], {
                "trace_s": statistics.median(r["trace_s"] for r in rs),
                "compile_s": statistics.median(times), "compile_range_s": [min(times), max(times)],
                "hlo_ops": rs[0]["hlo_ops"], "hlo_chars": rs[0]["hlo_chars"],
                "flops": compiled_flops(compiled[name])})
        return out

    def time_interleaved(self, built: dict, variants: dict) -> dict:
        """Wall time of one step of each compiled variant, round robin over `repeats` rounds."""
        states = {}
        for name, (fn, _) in built.items():
            v = variants[name]
            state = self.state_for(v[0] if isinstance(v, tuple) else v)
            state, _ = fn(state, self.perm, self.train_x, self.train_y)  # warm-up
            states[name] = jax.block_until_ready(state)
        times = {name: [] for name in built}
        for _ in range(max(self.repeats, 1)):
            for name, (fn, _) in built.items():
                t = time.perf_counter()
                states[name], _ = fn(states[name], self.perm, self.train_x, self.train_y)
                jax.block_until_ready(states[name])
                times[name].append(time.perf_counter() - t)
        return {name: {"median_s": float(np.median(ts)), "min_s": float(np.min(ts)),
                       "max_s": float(np.max(ts))} for name, ts in times.items()}

    def time_step(self, engine) -> dict:
        """Median and minimum wall time of one step (compiled once, warmed up), and its FLOPs."""
        fn, state = self.compiled(engine)
        state, _ = fn(state, self.perm, self.train_x, self.train_y)
        jax.block_until_ready(state)
        times = []
        for _ in range(self.repeats):
            t = time.perf_counter()
            state, _ = fn(state, self.perm, self.train_x, self.train_y)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t)
        return {"median_s": float(np.median(times)), "min_s": float(np.min(times)),
                "flops": compiled_flops(fn)}

    def profile(self, engine, trace_dir: Path) -> dict:
        """Milliseconds per step by kind of XLA op, from a jax.profiler trace of two steps."""
        fn, state = self.compiled(engine)
        return profile_step(fn, state, (self.perm, self.train_x, self.train_y), trace_dir)

    def time_data(self) -> float:
        """Minimum wall time of the step's data part alone: batch gather and augmentation."""
        e = self.engine
        key = jax.random.key(0)

        @jax.jit
        def batch(i):
            idx = jax.lax.dynamic_slice_in_dim(self.perm, i * e.batch_size, e.batch_size)
            return data_lib.augment(jax.random.fold_in(key, i), self.train_x[idx], pad=e.pad,
                                    flip=e.flip, mean=e.mean, std=e.std), self.train_y[idx]

        jax.block_until_ready(batch(0))
        times = []
        for i in range(max(self.repeats, 5)):
            t = time.perf_counter()
            jax.block_until_ready(batch(i % 4))
            times.append(time.perf_counter() - t)
        return float(np.min(times))


def bound(order: int) -> float:
    """Untruncated Taylor-mode cost of an order-k step in full steps: (2k+1 fwd + 3k-1 bwd) / 3."""
    return 5 * order / 3


def derived_count(plan: list[dict]) -> float | None:
    """An order's step in full steps, counted from its truncation plan: Σ passes × forward
    FLOPs per layer over the full step's 3 passes per layer (2 for the first, on data)."""
    if any(row["passes"] is None for row in plan):
        return None
    full = sum((2 if n == 0 else 3) * row["flops"] for n, row in enumerate(plan))
    return sum(row["passes"] * row["flops"] for row in plan) / full


def hlo_size(text: str) -> dict:
    """Size of a compiled HLO module's text: instructions (fused computations included) and
    characters with the metadata (op names, source lines) left out."""
    ops = sum(1 for line in text.splitlines() if " = " in line and not line.startswith("HloModule"))
    return {"hlo_ops": ops, "hlo_chars": len(re.sub(r", metadata=\{[^}]*\}", "", text))}


def load_taylor(path: Path):
    """Another taylor.py (an earlier commit's, say) as a module, to measure against this one."""
    spec = importlib.util.spec_from_file_location("taylorcli_bench_compare_taylor", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _expanding_with(taylor):
    """Within: the engine expands its Taylorized models with `taylor.taylorize` (None: its own)."""
    if taylor is None:
        yield
        return
    own = lockstep.taylorize
    lockstep.taylorize = taylor.taylorize
    try:
        yield
    finally:
        lockstep.taylorize = own


def run_setting(s: Setting, repeats: int, nested: bool = True,
                profile_dir: Path | None = None, compile_rounds: int = 1,
                compare: Path | None = None, first_step: bool = False) -> dict:
    """Every figure of one setting (and, with `profile_dir`, each order's step profiled).

    Compiles and steps are interleaved across the full step, each order, its nested
    construction and (with `compare`, a taylor.py) the other Taylor mode, so that the load of a
    shared machine falls on all of them alike.
    """
    b = Bench(s, repeats)
    out = {"setting": s.label(), "orders": {}}
    if first_step:  # before anything else of this setting: a fresh process, no compile cache
        out["first_step"] = first_step_cold(s)
    other = load_taylor(compare) if compare else None
    variants = {"full": b.engine_for(["full"])}
    for k in s.orders:
        variants[f"order{k}"] = b.engine_for([f"order{k}"])
        if other is not None:
            variants[f"compare{k}"] = (b.engine_for([f"order{k}"]), other)
        if nested:
            variants[f"nested{k}"] = b.engine_for([f"order{k}"], nested=True)
    built = b.compile_interleaved(variants, compile_rounds)
    steps = b.time_interleaved(built, variants)
    for key, v in variants.items():
        if not isinstance(v, tuple):
            b._compiled[(v.names, v.nested)] = built[key][0]
    figures = {name: {**steps[name], **built[name][1]} for name in variants}
    full = out["full"] = figures["full"]
    for k in s.orders:
        fast = figures[f"order{k}"]
        plan = b.plan(k)
        row = {"taylorize": fast, "flops_vs_full": fast["flops"] / full["flops"],
               "flops_vs_bound": fast["flops"] / (full["flops"] * bound(k)),
               "count": derived_count(plan), "plan": plan, **relative(fast, full)}
        if nested:
            ref = row["nested"] = figures[f"nested{k}"]
            row["speedup_vs_nested"] = ref["min_s"] / fast["min_s"]
            row["nested_flops_vs_full"] = ref["flops"] / full["flops"]
            row["nested_vs_full"] = relative(ref, full)
        if other is not None:
            row["compare"] = figures[f"compare{k}"]
            row["compare_vs_full"] = relative(figures[f"compare{k}"], full)
        out["orders"][str(k)] = row
    lock = b.time_step(b.engine)
    # Minimum over repeats: the least disturbed figure on a shared machine.
    separate = full["min_s"] + sum(r["taylorize"]["min_s"] for r in out["orders"].values())
    out["separate_flops"] = full["flops"] + sum(r["taylorize"]["flops"]
                                                for r in out["orders"].values())
    data_s = b.time_data()
    out.update({
        "lockstep": lock,
        "separate_sum_s": separate,
        "lockstep_vs_separate": lock["min_s"] / separate,
        "images_per_s": s.batch / lock["min_s"],
        "data_s": data_s,
        "data_share": data_s / lock["min_s"],
    })
    if profile_dir is not None:
        out["profile"] = profile_orders(b, profile_dir, with_nested=nested)
    return out


def relative(step: dict, full: dict) -> dict:
    """A step's figures over the full step's: FLOPs, program size, tracing, compile, wall time.

    `time_vs_flops` is the step's median time over (its FLOPs ratio × the full step's median):
    1 where the step runs at the full step's FLOP rate.
    """
    flops = step["flops"] / full["flops"]
    time_ratio = step["median_s"] / full["median_s"]
    return {"flops_vs_full": flops, "hlo_vs_full": step["hlo_ops"] / full["hlo_ops"],
            "trace_vs_full": step["trace_s"] / full["trace_s"],
            "compile_vs_full": step["compile_s"] / full["compile_s"],
            "time_vs_full": time_ratio, "time_vs_flops": time_ratio / flops}


def first_step_cold(s: Setting) -> dict:
    """A fresh Python process (no compile cache) to the end of its first lockstep step: seconds.

    The engine trains the full network and every order of the setting in one step, as
    `taylorcli train` does; `total_s` counts from the process start, imports included.
    """
    code = ("import time; t0 = time.perf_counter()\n"
            "from taylorcli.engine.xla_flags import apply_defaults; apply_defaults()\n"
            "import json, sys\n"
            "from taylorcli.bench.benchmark import Setting, _first_step\n"
            "print(json.dumps(_first_step(Setting(**json.loads(sys.argv[1])), t0)))\n")
    setting = {**dataclasses.asdict(s), "orders": list(s.orders)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run([sys.executable, "-c", code, json.dumps(setting)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _first_step(s: Setting, t0: float) -> dict:
    """Within a fresh process: build the lockstep engine, compile and run its first step."""
    jax.config.update("jax_enable_compilation_cache", False)
    imported = time.perf_counter()
    b = Bench(s, 1)
    state = b.state_for(b.engine)
    built = time.perf_counter()
    lowered = jax.jit(make_train_step(b.engine, 0), donate_argnums=0).lower(
        state, b.perm, b.train_x, b.train_y)
    traced = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    jax.block_until_ready(compiled(state, b.perm, b.train_x, b.train_y))
    done = time.perf_counter()
    return {"imports_s": imported - t0, "setup_s": built - imported, "trace_s": traced - built,
            "compile_s": compiled_at - traced, "run_s": done - compiled_at, "total_s": done - t0}


def profile_orders(b: Bench, trace_dir: Path, with_nested: bool = True) -> dict:
    """Each order's step, Taylor mode (and nested), broken down by kind of XLA op."""
    out = {}
    for k in b.s.orders:
        for nested in (False, True) if with_nested else (False,):
            label = f"order {k} {'nested' if nested else 'taylorize'}"
            out[label] = b.profile(b.engine_for([f"order{k}"], nested=nested),
                                   trace_dir / label.replace(" ", "_"))
    return out


def recipe_memory(names=TABLE1) -> dict:
    """Compiled memory (GiB) of the lockstep step of each Table 1 recipe, without running it."""
    out = {}
    for name in names:
        c = step_cost(build_setup(load_named_recipe(name)))
        out[name] = {"peak_gib": c.peak_bytes / 2**30, "temp_gib": c.temp_bytes / 2**30,
                     "flops": c.flops, "backend": c.backend}
    return out


def _render(results: dict, console: Console) -> None:
    for r in results["settings"]:
        t = Table(title=f"{r['setting']} (best of {results['repeats']}; {results['device']})",
                  title_justify="left")
        for col in ("step", "ms", "nested ms", "speedup", "FLOPs / full", "count",
                    "nested FLOPs / full", "untruncated bound"):
            t.add_column(col, justify="left" if col == "step" else "right")
        t.add_row("full", f"{r['full']['min_s'] * 1e3:.1f}", "", "", "1.00", "", "", "")
        for k, o in r["orders"].items():
            t.add_row(f"order {k}", f"{o['taylorize']['min_s'] * 1e3:.1f}",
                      f"{o['nested']['min_s'] * 1e3:.1f}" if "nested" in o else "",
                      f"{o['speedup_vs_nested']:.2f}x" if "nested" in o else "",
                      f"{o['flops_vs_full']:.2f}",
                      f"{o['count']:.2f}" if o["count"] is not None else "",
                      f"{o['nested_flops_vs_full']:.2f}" if "nested" in o else "",
                      f"{bound(int(k)):.2f}")
        t.add_row("lockstep", f"{r['lockstep']['min_s'] * 1e3:.1f}", "", "",
                  f"{r['lockstep']['flops'] / r['full']['flops']:.2f}", "", "", "")
        t.add_row("separate (sum)", f"{r['separate_sum_s'] * 1e3:.1f}", "", "",
                  f"{r['separate_flops'] / r['full']['flops']:.2f}", "", "", "")
        console.print(t)
        console.print("count: the truncation plan's passes per layer weighted by the layer's "
                      "FLOPs (taylor.truncation_plan); untruncated bound: 5k/3")
        _render_compile(r, results, console)
        _render_plans(r, console)
        console.print(f"lockstep / separate = {r['lockstep_vs_separate']:.3f}   "
                      f"images/s = {r['images_per_s']:.1f}   data+augmentation = "
                      f"{r['data_s'] * 1e3:.2f} ms ({100 * r['data_share']:.2f}% of the step)")
    if results.get("profile"):
        t = Table(title=f"where the step goes, ms per step ({results['settings'][0]['setting']}, "
                        "2 steps traced)", title_justify="left")
        kinds = ["wall_ms", *KINDS, "untraced"]
        for col in ("step", "wall", *kinds[1:]):
            t.add_column(col, justify="left" if col == "step" else "right")
        for label, row in results["profile"].items():
            t.add_row(label, *(f"{row[k]:.1f}" for k in kinds))
        console.print(t)
        console.print("untraced: wall time in no traced op; on the CPU mostly XLA's own (Eigen) "
                      "convolutions, whose trace events cover only their launch")
    if results.get("memory"):
        t = Table(title="compiled lockstep step of the Table 1 recipes", title_justify="left")
        for col in ("recipe", "peak GiB", "temporaries GiB", "TFLOPs/step", "backend"):
            t.add_column(col, justify="left" if col == "recipe" else "right")
        for name, m in results["memory"].items():
            t.add_row(name, f"{m['peak_gib']:.2f}", f"{m['temp_gib']:.2f}",
                      f"{m['flops'] / 1e12:.2f}", m["backend"])
        console.print(t)


def _render_compile(r: dict, results: dict, console: Console) -> None:
    """Per order: FLOPs, program size, tracing, compile and step time, each over the full step's."""
    t = Table(title=f"{r['setting']}: program and time per step, over the full step's (medians "
                    f"of {results['compile_rounds']} compiles and {results['repeats']} steps, "
                    "interleaved)", title_justify="left")
    for col in ("step", "FLOPs", "HLO ops", "trace", "compile s", "compile", "step ms", "step",
                "step / FLOPs"):
        t.add_column(col, justify="left" if col == "step" and not t.columns else "right")
    full = r["full"]
    t.add_row("full", "1.00", f"{full['hlo_ops']}", f"{full['trace_s']:.2f}s",
              _spread(full["compile_s"], full["compile_range_s"]), "1.00",
              _spread(full["median_s"] * 1e3, [full["min_s"] * 1e3, full["max_s"] * 1e3], 1),
              "1.00", "1.00")
    labels = {"": "", "compare": " (compare)", "nested": " nested"}
    for k, o in r["orders"].items():
        for key, label in labels.items():
            step = o["taylorize"] if not key else o.get(key)
            if step is None:
                continue
            rel = relative(step, full)
            t.add_row(f"order {k}{label}", f"{rel['flops_vs_full']:.2f}",
                      f"{rel['hlo_vs_full']:.2f}x", f"{rel['trace_vs_full']:.2f}x",
                      _spread(step["compile_s"], step["compile_range_s"]),
                      f"{rel['compile_vs_full']:.2f}x",
                      _spread(step["median_s"] * 1e3, [step["min_s"] * 1e3, step["max_s"] * 1e3], 1),
                      f"{rel['time_vs_full']:.2f}x", f"{rel['time_vs_flops']:.2f}")
    console.print(t)
    console.print("HLO ops: instructions of the compiled module, fused computations included; "
                  "trace: tracing and lowering; step / FLOPs: the step's time over (its FLOPs "
                  "ratio x the full step's time), 1 at the full step's FLOP rate; ranges are "
                  "fastest-slowest")
    if "first_step" in r:
        f = r["first_step"]
        console.print(f"first lockstep step of a fresh process (full and orders "
                      f"{', '.join(r['orders'])}, no compile cache): {f['total_s']:.1f} s = imports "
                      f"{f['imports_s']:.1f} + setup {f['setup_s']:.1f} + trace {f['trace_s']:.1f} "
                      f"+ compile {f['compile_s']:.1f} + run {f['run_s']:.1f}")


def _spread(median: float, span, digits: int = 2) -> str:
    return f"{median:.{digits}f} [{span[0]:.{digits}f}-{span[1]:.{digits}f}]"


def _render_plans(r: dict, console: Console) -> None:
    """Per layer, input to output: the partial sums of its output each order computes."""
    orders = list(r["orders"])
    t = Table(title=f"partial sums each layer supplies, per order ({r['setting']})",
              title_justify="left")
    t.add_column("layer")
    for k in orders:
        t.add_column(f"order {k}", justify="right")
    plans = [r["orders"][k]["plan"] for k in orders]
    for n, row in enumerate(plans[0]):
        cells = []
        for plan in plans:
            sums = plan[n]["sums"]
            cells.append(sums if isinstance(sums, str) else ",".join(map(str, sums)) +
                         f" ({plan[n]['passes']}p)")
        t.add_row(row["layer"].split("/")[-1], *cells)
    console.print(t)


def main(argv=None) -> None:
    """Parse options, run the benchmark, print the tables and write JSON."""
    p = argparse.ArgumentParser(prog="python -m taylorcli.bench", description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["cnn", "wrn", "vit", "both", "all"], default="all",
                   help="both: cnn and wrn; all: cnn, wrn and vit (the transformer)")
    p.add_argument("--width", type=int, default=128, help="CNN channels / WRN first conv channels")
    p.add_argument("--wrn-widen", type=int, default=4)
    p.add_argument("--wrn-width", type=int, help="WRN first conv channels [default: --width]")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=32, help="image side (synthetic data is cropped)")
    p.add_argument("--vit-width", type=int, default=32, help="transformer token dimension")
    p.add_argument("--vit-depth", type=int, default=2, help="transformer blocks")
    p.add_argument("--vit-heads", type=int, default=2)
    p.add_argument("--vit-batch", type=int, default=64)
    p.add_argument("--vit-image", type=int, default=12,
                   help="transformer input side (1 channel, digits-sized; patches of side/4)")
    p.add_argument("--orders", default="1,2,3,4")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile-rounds", type=int, default=3,
                   help="compiles of each step, interleaved, for the median compile time")
    p.add_argument("--compare-taylor", type=Path, metavar="TAYLOR_PY",
                   help="also measure the Taylor mode of another taylor.py (e.g. "
                        "`git show REV:taylorcli/taylor.py > old.py`), interleaved")
    p.add_argument("--no-first-step", action="store_true",
                   help="skip timing a fresh process to its first lockstep step")
    p.add_argument("--no-nested", action="store_true", help="skip taylorize_nested")
    p.add_argument("--no-memory", action="store_true", help="skip the Table 1 recipes' memory")
    p.add_argument("--quick", action="store_true",
                   help="small sizes that finish in a few minutes on 2 CPU cores (one compile "
                        "per step, no fresh-process first step, no compile of the Table 1 "
                        "recipes for their memory)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="also trace each order's step (first setting) into DIR and break it down")
    a = p.parse_args(argv)
    orders = tuple(int(k) for k in a.orders.split(","))
    if a.quick:
        a.width, a.wrn_width, a.wrn_widen, a.batch, a.image, a.repeats = 32, 16, 1, 32, 16, 3
        a.compile_rounds, a.no_first_step = 1, True
        a.no_memory = True  # compiling the real recipes takes minutes of its own
    settings = []
    if a.arch in ("cnn", "both", "all"):
        settings.append(Setting("cnn", 4, a.width, 1, a.batch, a.image, orders))
    if a.arch in ("wrn", "both", "all"):
        settings.append(Setting("wrn", 10 if a.quick else 16, a.wrn_width or a.width, a.wrn_widen,
                                a.batch, a.image, orders))
    if a.arch in ("vit", "all"):
        settings.append(Setting("vit", a.vit_depth, a.vit_width, a.vit_heads, a.vit_batch,
                                a.vit_image, orders, channels=1, pad=2))
    results = {"device": f"{jax.default_backend()} x{jax.device_count()}", "repeats": a.repeats,
               "compile_rounds": a.compile_rounds,
               "settings": [run_setting(s, a.repeats, nested=not a.no_nested,
                                        profile_dir=a.profile if i == 0 else None,
                                        compile_rounds=a.compile_rounds, compare=a.compare_taylor,
                                        first_step=s.arch == "vit" and not a.no_first_step)
                            for i, s in enumerate(settings)]}
    if a.profile:
        results["profile"] = results["settings"][0].pop("profile")
    if not a.no_memory:
        results["memory"] = recipe_memory()
    console = Console()
    # Written to a file, the tables keep their columns (rich would fold them at 80).
    _render(results, console if console.is_terminal else Console(width=160))
    if a.json:
        a.json.write_text(json.dumps(_summary(results) | {"details": results}, indent=2))


def _summary(results: dict) -> dict:
    """The headline figures, keyed as the issue names them."""
    first = results["settings"][0]
    return {
        "speedup_vs_nested": {k: o.get("speedup_vs_nested") for k, o in first["orders"].items()},
        "flops_vs_full": {k: o["flops_vs_full"] for k, o in first["orders"].items()},
        "count": {k: o["count"] for k, o in first["orders"].items()},
        "flops_vs_bound": {k: o["flops_vs_bound"] for k, o in first["orders"].items()},
        "lockstep_flops_vs_full": first["lockstep"]["flops"] / first["full"]["flops"],
        "separate_flops_vs_full": first["separate_flops"] / first["full"]["flops"],
        "lockstep_vs_separate": first["lockstep_vs_separate"],
        "images_per_s": first["images_per_s"],
        "data_share": first["data_share"],
        "memory_gib": {k: m["peak_gib"] for k, m in results.get("memory", {}).items()},
        "profile_ms": results.get("profile", {}),
        "per_setting": {r["setting"]: _setting_summary(r) for r in results["settings"]},
    }


def _setting_summary(r: dict) -> dict:
    """Per order: the Taylor step (and nested, and the compared taylor.py) over the full step."""
    out = {"full": {k: r["full"][k] for k in ("median_s", "min_s", "max_s", "flops", "hlo_ops",
                                               "trace_s", "compile_s", "compile_range_s")}}
    for k, o in r["orders"].items():
        row = {"taylorize": relative(o["taylorize"], r["full"]) | {
            "median_s": o["taylorize"]["median_s"]}}
        for key in ("nested", "compare"):
            if key in o:
                row[key] = relative(o[key], r["full"]) | {"median_s": o[key]["median_s"]}
        out[f"order{k}"] = row
    if "first_step" in r:
        out["first_step"] = r["first_step"]
    return out
