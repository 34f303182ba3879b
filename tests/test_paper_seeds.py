"""Manifests over seeds (a run per seed, its folder named by it) and the plan's estimated wall
time here (from steps and evaluations timed on this machine)."""

import csv
import math
from pathlib import Path

import pytest
import yaml

from conftest import TINY, run_cli
from taylorcli.errors import PaperError
from taylorcli.paper.manifest import load_manifest
from taylorcli.paper.plan import build_plan


def manifest(tmp_path: Path, **top) -> Path:
    """A test-only paper of the tiny recipe: runs a and b, a spawn sweep over a; `top` adds keys."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    raw = {"name": "tinypaper", "report": ["paper"],
           "runs": [{"name": "a", "recipe": str(recipe)},
                    {"name": "b", "recipe": str(recipe), "set": ["optim.lr=0.05"]},
                    {"name": "sweep", "spawn": {"parent": "a", "at": [0, 1], "children": 2}}],
           "small": {"runs": {"a": ["train.epochs=1"], "b": ["train.epochs=1"]},
                     "spawn_at": {"sweep": [0]}}}
    for key, value in top.items():
        if key == "small":
            raw["small"].update(value)
        elif key == "run_seeds":
            raw["runs"][1]["seeds"] = value
        else:
            raw[key] = value
    path = tmp_path / "tinypaper.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_seeds_expand_each_run_and_its_spawn_sweeps(tmp_path):
    path = manifest(tmp_path, seeds=[0, 3], run_seeds=[7])
    full = build_plan(load_manifest(str(path), "full"))
    names = [r.name for r in full.runs]
    # seed-major: every run's first seed, then the second; spawned runs after their parents
    assert names == ["a_s0", "b_s7", "a_s3", "sweep_s0/at0", "sweep_s0/at1", "sweep_s3/at0",
                     "sweep_s3/at1"]
    by = full.by_name()
    assert [by[n].recipe.seed for n in ("a_s0", "a_s3", "b_s7")] == [0, 3, 7]
    assert by["a_s3"].overrides[-1] == "seed=3" and by["a_s3"].folder == "a_s3"
    assert by["b_s7"].recipe.optim.lr == 0.05
    assert by["sweep_s3/at1"].recipe_arg == "a_s3" and by["sweep_s3/at1"].sweep == "sweep_s3"
    # at small scale, small.seeds replaces the manifest's; the small overrides reach every seed
    small = build_plan(load_manifest(str(manifest(tmp_path / "s", seeds=[0],
                                                  small={"seeds": [1, 2]})), "small"))
    trains = [r for r in small.runs if r.kind == "train"]
    assert [r.name for r in trains] == ["a_s1", "b_s1", "a_s2", "b_s2"]
    assert all(r.recipe.train.epochs == 1 and r.overrides[-1] == f"seed={r.recipe.seed}"
               for r in trains)
    assert [r.name for r in small.runs if r.kind == "spawn"] == ["sweep_s1/at0", "sweep_s2/at0"]


def test_without_seeds_runs_keep_their_names_and_recipe_seed(tmp_path):
    plan = build_plan(load_manifest(str(manifest(tmp_path)), "small"))
    assert [r.name for r in plan.runs] == ["a", "b", "sweep/at0"]
    assert all(r.recipe.seed == TINY["seed"] for r in plan.runs if r.kind == "train")


@pytest.mark.parametrize("top, needle", [
    ({"seeds": [0, 0]}, "distinct seeds"),
    ({"seeds": [-1]}, "distinct seeds"),
    ({"seeds": "0,1"}, "distinct seeds"),
    ({"small": {"seeds": []}}, "small.seeds"),
    ({"run_seeds": [1.5]}, "runs[1] (b): key seeds"),
])
def test_bad_seeds_are_one_line(tmp_path, top, needle):
    with pytest.raises(PaperError) as e:
        load_manifest(str(manifest(tmp_path, **top)), "small")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_spawn_sweep_takes_its_parents_seeds(tmp_path):
    path = manifest(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["runs"][2]["seeds"] = [0, 1]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PaperError, match="a spawn sweep takes its parent's seeds"):
        load_manifest(str(path), "full")


def test_bundled_small_scales_have_three_seeds_or_more():
    from taylorcli.paper.manifest import bundled_papers

    for name in bundled_papers():
        m = load_manifest(name, "small")
        assert m.seeds is not None and len(m.seeds) >= 3, name
        trains = [r for r in m.runs if r.spawn is None]
        assert all(r.name == f"{r.setting}_s{r.seed}" for r in trains), name
    assert len(load_manifest("theorem1", "small").seeds) >= 5


@pytest.mark.slow  # two compilations of the tiny step: ~20-40 s
def test_plan_estimates_the_wall_time_here_at_small_scale(tmp_path):
    """plan.csv: est_wall_s = compile_s + steps x step_s + evaluations x eval_s, per run, from
    timings made here (each distinct setting compiled once, its seeds sharing it); the printed
    total is their sum."""
    path = manifest(tmp_path, small={"seeds": [0, 1]})
    raw = yaml.safe_load(path.read_text())
    raw["runs"] = raw["runs"][:1]  # one setting: one compilation, and the test stays quick
    raw["small"] = {"runs": {"a": ["train.epochs=1"]}, "seeds": [0, 1]}
    path.write_text(yaml.safe_dump(raw))
    out = run_cli("paper", "plan", path, "--scale", "small", "--out", tmp_path / "p")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "p" / "plan.csv").open()))
    trains = [r for r in rows if r["kind"] == "train"]
    assert [r["run"] for r in trains] == ["a_s0", "a_s1"]
    total = 0.0
    for r in rows:
        compile_s, step_s, eval_s = (float(r[k]) for k in ("compile_s", "step_s", "eval_s"))
        assert step_s > 0 and eval_s > 0
        want = compile_s + int(r["steps"]) * step_s + int(r["evaluations"]) * eval_s
        assert math.isclose(float(r["est_wall_s"]), want, rel_tol=1e-4)
        total += float(r["est_wall_s"])
    # one epoch of 4 steps: evaluated at steps 0 and 4; the second seed compiles nothing new
    assert [int(r["evaluations"]) for r in trains] == [2, 2]
    assert float(trains[1]["compile_s"]) == 0 and float(trains[0]["compile_s"]) > 0
    assert "estimated wall time here" in out.stdout and "load average" in out.stdout
    full = run_cli("paper", "plan", path, "--out", tmp_path / "f")
    assert full.returncode == 0 and "estimated wall time here" not in full.stdout
    assert all(r["est_wall_s"] == "" for r in csv.DictReader((tmp_path / "f" / "plan.csv").open()))
