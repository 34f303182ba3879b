"""`python -m taylorcli.bench.startup`: how long `taylorcli train` takes to reach its first step,
cold (an empty compilation cache) and warm (the cache filled by an earlier run), interleaved
so the two see the same machine, phase by phase as each run records them in run.json
(`timings`: imports, data, model, state, first evaluation, first step), and what share of a
whole run its evaluations take. Medians with the spread (min .. max) over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(recipe: str, epochs: int, cache: Path, out: Path, sets=()) -> dict:
    """`taylorcli train RECIPE` as its own process: its wall time, and run.json's timings."""
    env = dict(os.environ, TAYLORCLI_COMPILE_CACHE=str(cache))
    args = [sys.executable, "-m", "taylorcli", "train", recipe, "--set", f"train.epochs={epochs}",
            *[a for s in sets for a in ("--set", s)], "--out", str(out)]
    began = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    timing = json.loads((out / "run.json").read_text())["timings"][-1]
    return {"wall_s": wall, **timing}


def spread(values) -> dict:
    """Median, min and max."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def measure(recipe: str = "digits", rounds: int = 5, whole_epochs: int | None = None) -> dict:
    """Cold and warm start-up, interleaved over `rounds`; with `whole_epochs`, one whole run's
    evaluation share."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm_cache = tmp / "warm"
        one_run(recipe, 1, warm_cache, tmp / "fill")  # fills the warm cache
        runs = {"cold": [], "warm": []}
        for i in range(rounds):
            for kind in ("cold", "warm"):
                cache = tmp / f"cold{i}" if kind == "cold" else warm_cache
                runs[kind].append(one_run(recipe, 1, cache, tmp / f"{kind}{i}"))
        out = {"recipe": recipe, "rounds": rounds}
        for kind, rows in runs.items():
            phases = sorted({p for r in rows for p in r["phases_s"]},
                            key=lambda p: list(rows[0]["phases_s"]).index(p)
                            if p in rows[0]["phases_s"] else 99)
            out[kind] = {"to_first_step_s": spread(r["to_first_step_s"] for r in rows),
                         "process_wall_s": spread(r["wall_s"] for r in rows),
                         "phases_s": {p: spread(r["phases_s"].get(p, 0.0) for r in rows)
                                      for p in phases}}
        if whole_epochs:
            whole = one_run(recipe, whole_epochs, warm_cache, tmp / "whole")
            out["whole_run"] = {"epochs": whole_epochs, "training_s": whole["training_s"],
                                "evaluating_s": whole["evaluating_s"],
                                "evaluation_share": whole["evaluating_s"] / whole["training_s"]}
        return out


def render(result: dict) -> str:
    """The measurement as text: one line per phase, cold beside warm."""
    lines = [f"start-up of `taylorcli train {result['recipe']}` over {result['rounds']} "
             f"interleaved rounds: median (min .. max) seconds"]
    fmt = lambda s: f"{s['median']:.2f} ({s['min']:.2f} .. {s['max']:.2f})"
    lines.append(f"{'phase':<18} {'cold':>24} {'warm':>24}")
    for phase in result["cold"]["phases_s"]:
        lines.append(f"{phase:<18} {fmt(result['cold']['phases_s'][phase]):>24} "
                     f"{fmt(result['warm']['phases_s'].get(phase, result['cold']['phases_s'][phase])):>24}")
    lines.append(f"{'to the first step':<18} {fmt(result['cold']['to_first_step_s']):>24} "
                 f"{fmt(result['warm']['to_first_step_s']):>24}")
    lines.append(f"{'whole process':<18} {fmt(result['cold']['process_wall_s']):>24} "
                 f"{fmt(result['warm']['process_wall_s']):>24}")
    if "whole_run" in result:
        w = result["whole_run"]
        lines.append(f"a whole {w['epochs']}-epoch run: evaluations {w['evaluating_s']:.1f} s "
                     f"of {w['training_s']:.1f} s of training ({w['evaluation_share']:.1%})")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Measure, print, and optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m taylorcli.bench.startup",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="digits")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--whole-epochs", type=int, default=None,
                        help="also a whole run of this many epochs, for the evaluation share")
    parser.add_argument("--json", type=Path, default=None)
    a = parser.parse_args(argv)
    result = measure(a.recipe, a.rounds, a.whole_epochs)
    print(render(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
