"""`taylorcli paper`: manifests, the plan and its costs, --local, the SLURM array through a
stand-in sbatch (its report equal to --local's), --status, and bad input as one line, exit 2."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

import pytest

from conftest import TINY, run_cli, table_without_clock
from taylorcli.recipe import dump_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]

def _manifest(tmp_path: Path, runs=None, report=("paper",)) -> Path:
    # Two runs of the shared tiny digits recipe differing in lr: a test-only paper in seconds.
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    runs = runs if runs is not None else [
        {"name": "a", "recipe": str(recipe), "feeds": ["Table 2"]},
        {"name": "b", "recipe": str(recipe), "set": ["optim.lr=0.05"], "feeds": ["Table 2"]},
    ]
    path = tmp_path / "tinypaper.yaml"
    small = {"runs": {r["name"]: ["train.epochs=1"] for r in runs}}
    path.write_text(yaml.safe_dump({"name": "tinypaper", "report": list(report), "runs": runs,
                                    "small": small}))
    return path


def _cli(*args, cwd, env=None, timeout=None):
    """`taylorcli paper ARGS` in this process."""
    return run_cli("paper", *args, cwd=cwd)


def _one_error_line(out):
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taylorcli: error: "), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    return lines[0]


def test_bundled_manifests_resolve_at_both_scales():
    from taylorcli.paper.manifest import bundled_papers, load_manifest
    from taylorcli.paper.plan import build_plan

    assert {"bai2020", "fort2020", "lee2019", "theorem1"} <= set(bundled_papers())
    for name in ("bai2020", "fort2020", "lee2019", "theorem1"):
        full, small = (build_plan(load_manifest(name, s)) for s in ("full", "small"))
        trains = {r.setting: r for r in full.runs if r.kind == "train"}
        smalls = [r for r in small.runs if r.kind == "train"]
        # every setting of the paper at both scales, each at three seeds or more when small
        assert list(dict.fromkeys(r.setting for r in smalls)) == list(trains)
        assert all(sum(r.setting == n for r in smalls) >= 3 for n in trains), name
        for s in smalls:
            f = trains[s.setting]
            # the structure is kept: the orders, parameterization, loss and recipe name
            assert f.recipe.taylor.orders == s.recipe.taylor.orders
            assert f.recipe.model.parameterization == s.recipe.model.parameterization
            assert f.recipe.train.loss == s.recipe.train.loss
            assert f.recipe.name == s.recipe.name
            assert s.recipe.data.dataset == "digits" and s.recipe.seed == s.seed
    bai = {r.setting: r.recipe for r in build_plan(load_manifest("bai2020", "small")).runs}
    assert bai["table3_cnnthick"].model.width == 4 * bai["table3_cnnthin"].model.width
    assert bai["table3_cnnthick"].optim == bai["table3_cnnthin"].optim
    assert bai["table3_cnnthick"].train == bai["table3_cnnthin"].train
    assert bai["table4_lr0.1"].optim.lr == pytest.approx(10 * bai["table4_lr0.01"].optim.lr)
    assert bai["table4_ntk"].model.parameterization == "ntk"
    assert bai["table4_ntk"].optim == bai["table4_lr0.1"].optim
    assert all(r.optim.schedule == "constant" for n, r in bai.items() if n.startswith("table4"))
    assert bai["cnnthick"].model.width == 4 * bai["cnnthin"].model.width
    assert bai["wrnthick"].model.widen == 2 * bai["wrnthin"].model.widen
    fort = build_plan(load_manifest("fort2020", "full"))
    spawned = [r for r in fort.runs if r.kind == "spawn"]
    assert [r.at for r in spawned] == [0, 1, 2, 5, 10, 20, 40, 80]
    assert spawned[0].models == ["full", "spawn@0/order1", "spawn@0/order2", "child0", "child1"]


def test_plan_counts_parameters_flops_and_gpu_hours(tmp_path):
    manifest = _manifest(tmp_path)
    out = _cli(manifest, "--plan", "--tflops", "0.5", "--out", tmp_path / "p", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "p" / "plan.csv").open()))
    assert [r["run"] for r in rows] == ["a", "b"]
    # CNN-2-4 on 12x12x1: conv 3*3*1*4+4, conv 3*3*4*4+4, dense 4*10+10
    assert int(rows[0]["params"]) == (9 * 4 + 4) + (9 * 16 + 4) + (4 * 10 + 10)
    for r in rows:
        assert r["models"] == "full+order1+order2" and int(r["steps"]) == 2 * 4
        flops, total = float(r["flops_per_step"]), float(r["flops_total"])
        assert flops > 0 and math.isclose(total, flops * 8, rel_tol=1e-5)
        assert math.isclose(float(r["gpu_hours"]), total / 0.5e12 / 3600, rel_tol=1e-4)
        assert float(r["memory_gib"]) > 0
    assert "assumption" in out.stdout and "0.5 TFLOP/s" in out.stdout
    assert not list((tmp_path / "p").glob("a"))  # nothing trained


def _standin_sbatch(folder: Path) -> Path:
    """An `sbatch` that runs the job at once: each array task in turn, with Slurm's variables."""
    folder.mkdir()
    script = folder / "sbatch"
    script.write_text(f"""#!{sys.executable}
import os, re, subprocess, sys
args = sys.argv[1:]
job = args[-1]
counter = {str(folder / 'next_id')!r}
jid = int(open(counter).read()) if os.path.exists(counter) else 1000
text = open(job).read()
m = re.search(r"#SBATCH --array=(\\d+)-(\\d+)", text)
tasks = range(int(m.group(1)), int(m.group(2)) + 1) if m else [None]
open(counter, "w").write(str(jid + 1 + len(tasks)))
with open({str(folder / 'calls')!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
for n, i in enumerate(tasks):
    env = dict(os.environ, SLURM_JOB_ID=str(jid + 1 + n))
    if i is not None:
        env |= dict(SLURM_ARRAY_JOB_ID=str(jid), SLURM_ARRAY_TASK_ID=str(i),
                    SLURM_ARRAY_TASK_COUNT=str(len(tasks)), SLURM_ARRAY_TASK_MIN=m.group(1),
                    SLURM_ARRAY_TASK_MAX=m.group(2))
    subprocess.run(["bash", job], env=env)
print(f"{{jid}};cluster" if "--parsable" in args else f"Submitted batch job {{jid}}")
""")
    script.chmod(0o755)
    return folder


@pytest.mark.slow
def test_local_and_the_slurm_array_write_the_same_report_and_status_reads_them(tmp_path):
    manifest = _manifest(tmp_path)
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    out = _cli(manifest, "--scale", "small", "--local", "--out", local, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (local / "report" / "report.md").is_file()
    # resumable: rerunning trains nothing
    again = _cli(manifest, "--scale", "small", "--local", "--out", local, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 2, again.stdout

    bin_ = _standin_sbatch(tmp_path / "bin")
    out = _cli(manifest, "--scale", "small", "--slurm", "--out", cluster, "--partition", "gpu",
               "--account", "lab", "--sbatch", "--mem=8G", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    array = (cluster / "slurm" / "train.sbatch").read_text()
    for line in ("#SBATCH --array=0-1", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
                 "#SBATCH --mem=8G", "#SBATCH --requeue --signal=B:USR1@300", "requeue.sh"):
        assert line in array, line
    command = out.stdout.strip().splitlines()[-1]
    assert command.startswith("j0=$(sbatch --parsable") and "afterany" in command
    assert not (cluster / "a").exists()  # written, not submitted
    env = os.environ | {"PATH": f"{bin_}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    calls = (bin_ / "calls").read_text().splitlines()
    assert len(calls) == 2 and "--dependency=afterany:1000" in calls[1]
    mine = (local / "report" / "report.md").read_text().replace(str(local), "OUT")
    theirs = (cluster / "report" / "report.md").read_text().replace(str(cluster), "OUT")
    assert theirs == mine
    for run in ("a", "b"):
        assert table_without_clock(cluster / run / "metrics.csv") == \
            table_without_clock(local / run / "metrics.csv")

    status = _cli(manifest, "--scale", "small", "--status", "--out", cluster, cwd=tmp_path)
    assert status.returncode == 0 and "2 done, 0 partial, 0 missing, 0 failed" in status.stdout


def test_status_shows_partial_missing_and_failed_runs(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    manifest = _manifest(tmp_path, runs=[
        {"name": "ok", "recipe": str(recipe), "set": ["train.epochs=1"], "feeds": ["Table 2"]},
        {"name": "boom", "recipe": str(recipe), "set": ["optim.lr=1e30", "optim.grad_clip=null",
                                                         "train.epochs=1"],
         "feeds": ["Table 2", "Figure 2"]},
        {"name": "later", "recipe": str(recipe), "feeds": ["Figure 2"]}])
    out = tmp_path / "o"
    first = _cli(manifest, "--status", "--out", out, cwd=tmp_path)
    assert "no such folder" in _one_error_line(first)
    from taylorcli.paper.manifest import load_manifest
    from taylorcli.paper.plan import build_plan
    from taylorcli.paper.local import run_local
    from taylorcli.paper.status import statuses

    plan = build_plan(load_manifest(str(manifest)))
    plan.runs = plan.runs[:2]  # "later" never runs
    result = run_local(plan, out, say=lambda line: None)
    assert list(result.trained) == ["ok"] and list(result.failed) == ["boom"]
    states = {s.run.name: s.state for s in statuses(build_plan(load_manifest(str(manifest))), out)}
    assert states == {"ok": "done", "boom": "failed", "later": "missing"}
    # a run stopped after its first evaluation: its metrics end before the last epoch
    metrics = out / "ok" / "metrics.csv"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(ln for ln in lines if ln.split(",")[2] in ("epoch", "0")) + "\n")
    shown = _cli(manifest, "--status", "--out", out, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "0 done, 1 partial, 1 missing, 1 failed" in text, text
    assert "epoch 0 of 1" in text and "diverged" in text  # the failed run's last log line
    readiness = {ln.split("│")[1].strip(): ln.split("│")[2].strip()
                 for ln in text.splitlines() if ln.count("│") == 5 and ("Table" in ln or "Figure" in ln)}
    assert readiness == {"Table 2": "partial", "Figure 2": "waiting"}, text


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    manifest = _manifest(tmp_path)
    assert "unknown paper" in _one_error_line(_cli("bai2021", "--plan", cwd=tmp_path))
    line = _one_error_line(_cli("bai2020", "--slurm", "--data", tmp_path / "nope.tar.gz",
                                "--out", tmp_path / "s", cwd=tmp_path))
    assert "--data" in line and not (tmp_path / "s").exists()
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    line = _one_error_line(_cli(manifest, "--plan", "--out", blocker / "sub", cwd=tmp_path))
    assert "--out" in line and blocker.read_text() == "mine"
    other = tmp_path / "other" / "x"
    other.mkdir(parents=True)
    r = recipe_from_dict(dict(TINY, name="somethingelse"), "t", ["model.width=8"])
    (other / "recipe.yaml").write_text(dump_recipe(r))
    (other / "metrics.csv").write_text("model\n")
    line = _one_error_line(_cli(manifest, "--plan", "--out", tmp_path / "other", cwd=tmp_path))
    assert "not a `taylorcli paper` folder" in line  # no paper.json: the user's folder
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["x"]  # nothing written
    (tmp_path / "other" / "paper.json").write_text('{"paper": "tinypaper", "scale": "full"}')
    line = _one_error_line(_cli(manifest, "--plan", "--out", tmp_path / "other", cwd=tmp_path))
    assert "somethingelse" in line and "not a run of this plan" in line
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["paper.json", "x"]
    assert "exactly one of" in _one_error_line(_cli(manifest, "--plan", "--local", cwd=tmp_path))
