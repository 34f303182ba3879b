"""`python -m taylorcli.bench.gpu_check`: what a GPU does with the papers' recipes, in one command
of a few minutes, before anyone pays for the real runs.

For CNNTHIN and WRNTHIN (Table 1) at the paper's batch size on synthetic CIFAR-shaped data:
each model's training step alone (full, orders 1-4) and the lockstep step of all five, in
float32 and with TF32 matrix products: compile time, steps/s, images/s, XLA's FLOPs per step,
achieved FLOP/s against the card's peak, and peak device memory. Then a determinism check: a
short run stopped (SIGTERM) and resumed against one run through, compared value for value; if
they differ, the difference and the same check with XLA's deterministic GPU flag. Results go to
--out as gpu_check.json and gpu_check.md, with the card's name. On a CPU it refuses unless
--allow-cpu (tiny sizes, for testing the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..names import model_names

# Dense matrix throughput of the cards this is run on (NVIDIA's datasheets, SXM): float32
# without tensor cores, and TF32 on tensor cores without sparsity.
PEAK_TFLOPS = {"H100": {"float32": 67.0, "tf32": 494.7}, "H200": {"float32": 67.0, "tf32": 494.7},
               "A100": {"float32": 19.5, "tf32": 156.0}}
RECIPES = ("cnnthin", "wrnthin")
MODELS = (*((name,) for name in model_names(range(1, 5))), tuple(model_names(range(1, 5))))


def _peak(kind: str, precision: str) -> float | None:
    for name, peaks in PEAK_TFLOPS.items():
        if name in kind:
            return peaks[precision] * 1e12
    return None


def _recipe(name: str, tiny: bool):
    from ..recipe import load_named_recipe

    sets = ["data.dataset=synthetic", "eval.save_logits=false"]
    if tiny:  # the script's own test on a CPU: a few channels, a small batch
        sets += ["model.width=4", "model.widen=1", "model.depth=10" if name.startswith("wrn")
                 else "model.depth=2", "train.batch_size=8", "data.synthetic_train=64"]
    else:
        sets += ["data.synthetic_train=2048"]
    return load_named_recipe(name, sets)


def measure_step(recipe, names, precision: str, repeats: int) -> dict:
    """One compiled step of the models `names`: compile time, FLOPs, memory, steps/s."""
    import jax
    import jax.numpy as jnp

    from ..data import load_for_recipe, with_data_stats
    from ..engine.costs import compiled_flops
    from ..engine.lockstep import epoch_permutations, make_train_step
    from ..engine.setup import build_setup

    ds = load_for_recipe(recipe)
    setup = build_setup(with_data_stats(recipe, ds), ds)
    engine = setup.engine.only(names)
    state = engine_state(setup, engine)
    x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    perm = epoch_permutations(engine, recipe.seed, 0, len(ds.train_y))
    matmul = "tensorfloat32" if precision == "tf32" else "highest"
    with jax.default_matmul_precision(matmul):
        began = time.perf_counter()
        compiled = jax.jit(make_train_step(engine, recipe.seed), donate_argnums=0).lower(
            state, perm, x, y).compile()
        compile_s = time.perf_counter() - began
        state, _ = compiled(state, perm, x, y)
        jax.block_until_ready(state)
        began = time.perf_counter()
        for _ in range(repeats):
            state, _ = compiled(state, perm, x, y)
        jax.block_until_ready(state)
        step_s = (time.perf_counter() - began) / repeats
    flops = compiled_flops(compiled)
    device = jax.local_devices()[0]
    stats = {}
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics (the CPU)
        stats = {}
    peak = _peak(device.device_kind, precision)
    return {"models": "+".join(names), "precision": precision, "compile_s": compile_s,
            "step_s": step_s, "steps_per_s": 1 / step_s,
            "images_per_s": recipe.train.batch_size / step_s, "flops_per_step": flops,
            "achieved_tflops": flops / step_s / 1e12,
            "share_of_peak": flops / step_s / peak if peak else None,
            "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None}


def engine_state(setup, engine):
    """Fresh state of an engine restricted to some models."""
    import jax
    import jax.numpy as jnp

    from ..engine.lockstep import fresh_state

    theta0 = setup.initial_state().theta0
    return fresh_state(engine, jax.tree.map(jnp.copy, theta0))


_STOPPER = """
import os, signal, sys
import taylorcli.run.progress as progress
AT = int(sys.argv[1])


class StopAt(progress.PlainProgress):
    def step(self, step, latest):
        super().step(step, latest)
        if step == AT:
            os.kill(os.getpid(), signal.SIGTERM)


progress.make_progress = lambda console=None: StopAt()
from taylorcli import cli
sys.argv = ["taylorcli", *sys.argv[2:]]
cli.console_main()
"""


def determinism(recipe_name: str, tiny: bool, flags: str = "") -> dict:
    """A short run stopped at its middle and resumed, against one run through: the largest
    difference of any metric and of any saved logit (0 when identical)."""
    import numpy as np
    import pandas as pd

    epochs = 2
    sets = ["data.dataset=synthetic", "data.synthetic_train=512" if not tiny else
            "data.synthetic_train=64", f"train.epochs={epochs}", "optim.decay_epochs=[]",
            "checkpoint.every_steps=1"]
    if tiny:
        sets += ["model.width=4", "model.depth=2", "train.batch_size=8",
                 "taylor.orders=[1,2]"]
    else:
        sets += ["train.batch_size=64", "taylor.orders=[1,2,3,4]"]
    args = ["train", recipe_name, *[a for s in sets for a in ("--set", s)]]
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
    with tempfile.TemporaryDirectory() as tmp:
        through, stopped = Path(tmp) / "through", Path(tmp) / "stopped"
        run = lambda *a: subprocess.run([sys.executable, *a], env=env, capture_output=True,
                                        text=True, timeout=600)
        done = run("-m", "taylorcli", *args, "--out", str(through))
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1:]}
        steps = int(pd.read_csv(through / "metrics.csv")["step"].max())
        first = run("-c", _STOPPER, str(steps // 2), *args, "--out", str(stopped))
        second = run("-m", "taylorcli", *args, "--out", str(stopped))
        if first.returncode != 75 or second.returncode != 0:
            return {"error": (first.stderr + second.stderr).strip().splitlines()[-1:]}
        a = pd.read_csv(through / "metrics.csv").drop(columns=["wall_time"])
        b = pd.read_csv(stopped / "metrics.csv").drop(columns=["wall_time"])
        numeric = a.select_dtypes("number").columns
        metric_diff = float(np.nanmax(np.abs(a[numeric].to_numpy() - b[numeric].to_numpy())))
        logit_diff = 0.0
        for f in sorted((through / "logits").glob("*.npz")):
            with np.load(f) as x, np.load(stopped / "logits" / f.name) as y:
                for k in x.files:
                    logit_diff = max(logit_diff, float(np.max(np.abs(x[k] - y[k]))))
        return {"stopped_at": steps // 2, "steps": steps, "max_metric_diff": metric_diff,
                "max_logit_diff": logit_diff, "identical": metric_diff == 0 and logit_diff == 0,
                "xla_flags": flags}


def main(argv=None) -> None:
    """The check, printed and written to --out."""
    parser = argparse.ArgumentParser(prog="python -m taylorcli.bench.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/gpu", help="where the results go")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run on a CPU with tiny sizes (to test this script)")
    a = parser.parse_args(argv)
    import jax

    backend = jax.default_backend()
    tiny = backend != "gpu"
    if tiny and not a.allow_cpu:
        print(f"taylorcli: error: the GPU check found no GPU (JAX's backend is {backend}); "
              f"run it on a GPU machine, or with --allow-cpu to test the script",
              file=sys.stderr)
        sys.exit(2)
    device = jax.local_devices()[0]
    results = {"device": device.device_kind, "backend": backend, "jax": jax.__version__,
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "steps": [], "determinism": []}
    for name in RECIPES:
        recipe = _recipe(name, tiny)
        for precision in ("float32", "tf32"):
            for names in MODELS:
                row = {"recipe": name, "batch": recipe.train.batch_size,
                       **measure_step(recipe, names, precision, a.repeats)}
                results["steps"].append(row)
                print(json.dumps(row), flush=True)
    check = determinism("cnnthin", tiny)
    results["determinism"].append(check)
    if not check.get("identical", False) and not tiny:
        results["determinism"].append(determinism("cnnthin", tiny,
                                                  "--xla_gpu_deterministic_ops=true"))
    print(json.dumps(results["determinism"]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(results))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")


def markdown(results: dict) -> str:
    """The results as a Markdown table per recipe, then the determinism check."""
    lines = [f"# GPU check on {results['device']} (JAX {results['jax']})", ""]
    head = ("| recipe | batch | models | precision | compile s | steps/s | images/s | "
            "TFLOP/step | TFLOP/s | of peak | peak GiB |")
    lines += [head, "|" + " --- |" * 11]
    for r in results["steps"]:
        share = f"{r['share_of_peak']:.1%}" if r["share_of_peak"] else "—"
        mem = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] else "—"
        lines.append(f"| {r['recipe']} | {r['batch']} | {r['models']} | {r['precision']} | "
                     f"{r['compile_s']:.1f} | {r['steps_per_s']:.2f} | {r['images_per_s']:.0f} "
                     f"| {r['flops_per_step'] / 1e12:.3f} | {r['achieved_tflops']:.2f} | "
                     f"{share} | {mem} |")
    lines += ["", "Determinism (a run stopped at its middle and resumed, against one run "
              "through):", ""]
    for d in results["determinism"]:
        lines.append(f"- {json.dumps(d)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from ..engine import xla_flags

    xla_flags.apply_defaults()
    main()
