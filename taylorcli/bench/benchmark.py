"""`python -m taylorcli.bench`: speed of the Taylor-mode engine against nested JVPs and its FLOP bound.

Measured side by side in one process, on synthetic CIFAR-shaped data (sizes adjustable):
each order's training step with `taylorize` and with `taylorize_nested`, the full step, the
lockstep step against the sum of the separate steps, XLA's FLOPs of each order's step against
the count derived from its truncation plan (which partial sums each layer supplies) and the
untruncated Taylor-mode bound (5k/3 full steps: 2k+1 forward passes and 3k-1 backward), images
per second, the share of the step spent on data and augmentation, and the compiled memory of
the lockstep step of each Table 1 recipe at its batch size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from .. import data as data_lib
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
    """One architecture at one size, on synthetic data."""

    arch: str
    depth: int
    width: int
    widen: int
    batch: int
    image: int
    orders: tuple[int, ...]

    def label(self) -> str:
        """Short name, e.g. cnn-4-128 b256 32px."""
        name = f"{self.arch}-{self.depth}-{self.widen}-{self.width}" if self.arch == "wrn" \
            else f"{self.arch}-{self.depth}-{self.width}"
        return f"{name} b{self.batch} {self.image}px"


class Bench:
    """Compiled steps of one setting, timed and costed."""

    def __init__(self, s: Setting, repeats: int):
        self.s, self.repeats = s, repeats
        self.recipe = recipe_from_dict({
            "data": {"dataset": "synthetic", "synthetic_train": 4 * s.batch, "pad": 4},
            "model": {"arch": s.arch, "depth": s.depth, "width": s.width, "widen": s.widen},
            "taylor": {"orders": list(s.orders)},
            "train": {"batch_size": s.batch},
            "optim": {"lr": 0.01, "grad_clip": 5.0},
        }, "bench")
        ds = data_lib.load_dataset("synthetic", synthetic_train=4 * s.batch, synthetic_test=8)
        x = ds.train_x[:, : s.image, : s.image, :]
        self.spec = data_lib.DatasetSpec("synthetic", x.shape[1:], 10, len(x), 8, ds.mean, ds.std)
        self.train_x, self.train_y = jnp.asarray(x), jnp.asarray(ds.train_y)
        self.perm = jnp.arange(len(x))
        self.network = build_network(self.recipe.model, 10, seed=self.recipe.seed)
        layers = inspect(self.network, self.spec.image_shape, 10)
        self.engine = build_engine(self.recipe, self.spec, self.network, layers)
        self.theta0 = initial_params(self.network, self.recipe.seed, self.spec.image_shape)
        self._compiled = {}

    def plan(self, order: int) -> list[dict]:
        """Taylor mode's truncation plan of this setting's network at one order."""
        return truncation_plan(self.engine.apply, self.theta0, order,
                               self.train_x[: self.s.batch])

    def engine_for(self, names, nested=False):
        """The lockstep engine restricted to some models."""
        specs = tuple(s for s in self.engine.models if s.name in names)
        return dataclasses.replace(self.engine, models=specs, nested=nested)

    def compiled(self, engine):
        """The engine's step compiled for this setting's shapes (once per engine), and a state."""
        # A copy: the step donates its state, θ0 included.
        state = fresh_state(engine, jax.tree.map(jnp.copy, self.theta0))
        key = (engine.names, engine.nested)
        if key not in self._compiled:
            step = jax.jit(make_train_step(engine, 0), donate_argnums=0)
            self._compiled[key] = step.lower(state, self.perm, self.train_x, self.train_y).compile()
        return self._compiled[key], state

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


def run_setting(s: Setting, repeats: int, nested: bool = True,
                profile_dir: Path | None = None) -> dict:
    """Every figure of one setting (and, with `profile_dir`, each order's step profiled)."""
    b = Bench(s, repeats)
    full = b.time_step(b.engine_for(["full"]))
    out = {"setting": s.label(), "full": full, "orders": {}}
    for k in s.orders:
        fast = b.time_step(b.engine_for([f"order{k}"]))
        plan = b.plan(k)
        row = {"taylorize": fast, "flops_vs_full": fast["flops"] / full["flops"],
               "flops_vs_bound": fast["flops"] / (full["flops"] * bound(k)),
               "count": derived_count(plan), "plan": plan}
        if nested:
            ref = b.time_step(b.engine_for([f"order{k}"], nested=True))
            row["nested"] = ref
            row["speedup_vs_nested"] = ref["min_s"] / fast["min_s"]
            row["nested_flops_vs_full"] = ref["flops"] / full["flops"]
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
    p.add_argument("--arch", choices=["cnn", "wrn", "both"], default="both")
    p.add_argument("--width", type=int, default=128, help="CNN channels / WRN first conv channels")
    p.add_argument("--wrn-widen", type=int, default=4)
    p.add_argument("--wrn-width", type=int, help="WRN first conv channels [default: --width]")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=32, help="image side (synthetic data is cropped)")
    p.add_argument("--orders", default="1,2,3,4")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-nested", action="store_true", help="skip taylorize_nested")
    p.add_argument("--no-memory", action="store_true", help="skip the Table 1 recipes' memory")
    p.add_argument("--quick", action="store_true",
                   help="small sizes that finish in a few minutes on 2 CPU cores (and no "
                        "compile of the Table 1 recipes for their memory)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="also trace each order's step (first setting) into DIR and break it down")
    a = p.parse_args(argv)
    orders = tuple(int(k) for k in a.orders.split(","))
    if a.quick:
        a.width, a.wrn_width, a.wrn_widen, a.batch, a.image, a.repeats = 32, 16, 1, 32, 16, 3
        a.no_memory = True  # compiling the real recipes takes minutes of its own
    settings = []
    if a.arch in ("cnn", "both"):
        settings.append(Setting("cnn", 4, a.width, 1, a.batch, a.image, orders))
    if a.arch in ("wrn", "both"):
        settings.append(Setting("wrn", 10 if a.quick else 16, a.wrn_width or a.width, a.wrn_widen,
                                a.batch, a.image, orders))
    results = {"device": f"{jax.default_backend()} x{jax.device_count()}", "repeats": a.repeats,
               "settings": [run_setting(s, a.repeats, nested=not a.no_nested,
                                        profile_dir=a.profile if i == 0 else None)
                            for i, s in enumerate(settings)]}
    if a.profile:
        results["profile"] = results["settings"][0].pop("profile")
    if not a.no_memory:
        results["memory"] = recipe_memory()
    _render(results, Console())
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
    }
