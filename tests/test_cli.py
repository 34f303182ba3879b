"""`taylorcli train` end to end: the run directory contract, dry runs, bad input, plain output."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run_cli, run_process
from taylorcli.data import load_dataset
from taylorcli.recipe import load_recipe, recipe_from_dict

METRICS_COLUMNS = ["model", "order", "epoch", "step", "lr", "train_loss", "train_acc",
                   "test_loss", "test_acc", "cos_param", "cos_func", "diverged",  # DESIGN.md
                   "func_dist", "wall_time", "param_dist"]  # added after the contract's columns
LAYERS_COLUMNS = ["model", "epoch", "layer", "distance", "relative_distance"]
MODELS = ["full", "order1", "order2"]
# The shared tiny run: 128 examples / batch 32 = 4 steps per epoch, 2 epochs, evaluated at the
# start and after each epoch.
SPE = 4
POINTS = [0, 4, 8]
TEST_SIZE = 64


@pytest.fixture(scope="module")
def recipe_file(tiny_file):
    return tiny_file


@pytest.fixture(scope="module")
def main_run(tiny_run):
    """The session's finished tiny run and what its command printed (no TTY)."""
    return (tiny_run.parent / "train.out").read_text(), tiny_run


def test_train_exit_code_and_files(main_run):
    printed, out = main_run
    assert "Traceback" not in printed
    assert {"recipe.yaml", "metrics.csv", "layers.csv", "logits"} <= {p.name for p in out.iterdir()}
    # No temporary files of the atomic writes are left behind.
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_recipe_yaml_is_resolved_recipe_with_overrides(main_run, recipe_file):
    _, out = main_run
    raw = yaml.safe_load((out / "recipe.yaml").read_text())
    assert raw["train"]["epochs"] == 2 and raw["eval"]["every_epochs"] == 1
    # Fully resolved: every field, defaults included, not just what the file said.
    assert raw["optim"]["nesterov"] is False and raw["model"]["widen"] == 4
    # ...and the data's standardization, computed from the training set, written in.
    from taylorcli.data import load_for_recipe, with_data_stats

    expected = load_recipe(recipe_file)
    ds = load_for_recipe(expected)
    assert raw["data"]["mean"] == list(ds.mean) and raw["data"]["std"] == list(ds.std)
    expected = with_data_stats(expected, ds)
    assert load_recipe(out / "recipe.yaml") == expected
    assert recipe_from_dict(raw) == expected


def test_metrics_csv_contract(main_run):
    _, out = main_run
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == METRICS_COLUMNS
    m = pd.read_csv(out / "metrics.csv")
    assert len(m) == len(MODELS) * len(POINTS)
    assert sorted(zip(m["model"], m["step"])) == sorted((n, s) for n in MODELS for s in POINTS)
    assert m.duplicated(["model", "step"]).sum() == 0
    assert (m["order"] == m["model"].map({"full": 0, "order1": 1, "order2": 2})).all()
    np.testing.assert_allclose(m["epoch"], m["step"] / SPE)
    np.testing.assert_allclose(m["lr"], 0.1)
    assert not m["diverged"].astype(bool).any()
    later = m[m["step"] > 0]
    assert later[["train_loss", "train_acc", "test_loss", "test_acc", "cos_func"]].notna().all().all()
    assert ((later["train_acc"] >= 0) & (later["train_acc"] <= 1)).all()
    np.testing.assert_allclose(later[later["model"] == "full"]["cos_param"], 1.0)
    assert later["cos_param"].between(-1, 1).all()


def test_layers_csv_contract(main_run):
    _, out = main_run
    header = (out / "layers.csv").read_text().splitlines()[0]
    assert header.split(",") == LAYERS_COLUMNS
    layers = pd.read_csv(out / "layers.csv")
    expected = {(n, s / SPE, layer) for n in MODELS for s in POINTS for layer in ("conv1", "conv2", "dense")}
    assert len(layers) == len(expected)
    assert set(zip(layers["model"], layers["epoch"], layers["layer"])) == expected
    start = layers[layers["epoch"] == 0]
    assert (start["distance"] == 0).all() and (start["relative_distance"] == 0).all()
    moved = layers[layers["epoch"] > 0]
    assert (moved["distance"] > 0).all()


def saved_logits(out):
    files = sorted((out / "logits").glob("*.npz"))
    by_step = {}
    for f in files:
        step = int(re.search(r"(\d+)", f.name).group(1))
        with np.load(f) as z:
            by_step[step] = {k: z[k] for k in z.files}
    return by_step


def test_logits_files(main_run):
    _, out = main_run
    logits = saved_logits(out)
    assert sorted(logits) == POINTS
    for step, arrays in logits.items():
        assert sorted(arrays) == sorted(MODELS), step
        for name, a in arrays.items():
            assert a.shape == (TEST_SIZE, 10), (step, name)
            assert np.isfinite(a).all()
    for name in MODELS:  # all models are the network at θ0
        np.testing.assert_array_equal(logits[0][name], logits[0]["full"])


def test_metrics_agree_with_saved_logits(main_run):
    """test_acc, test_loss and cos_func recomputed with numpy from the logits and the labels."""
    _, out = main_run
    labels = load_dataset("digits", test_limit=TEST_SIZE).test_y
    assert len(labels) == TEST_SIZE
    m = pd.read_csv(out / "metrics.csv")
    logits = saved_logits(out)
    checked = 0
    for _, row in m.iterrows():
        z = logits[row["step"]][row["model"]].astype(np.float64)
        acc = np.mean(z.argmax(axis=1) == labels)
        shifted = z - z.max(axis=1, keepdims=True)
        ce = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels])
        a = z - z.mean(axis=1, keepdims=True)
        f = logits[row["step"]]["full"].astype(np.float64)
        f = f - f.mean(axis=1, keepdims=True)
        cos = np.sum(a * f) / np.sqrt(np.sum(a * a) * np.sum(f * f))
        assert row["test_acc"] == pytest.approx(acc, abs=1e-7), (row["model"], row["step"])
        assert row["test_loss"] == pytest.approx(ce, rel=1e-5), (row["model"], row["step"])
        assert row["cos_func"] == pytest.approx(cos, abs=1e-6), (row["model"], row["step"])
        checked += 1
    assert checked == len(MODELS) * len(POINTS)


def test_plain_low_volume_output_without_tty(main_run):
    printed, _ = main_run
    text = printed
    assert "\x1b" not in text, "ANSI escape codes without a terminal"
    assert "\r" not in text
    lines = [line for line in printed.splitlines() if line.strip()]
    assert lines, "no progress at all"
    # Low volume: bounded by the evaluation points (plus a start line and a final summary),
    # not by the 32 optimizer steps.
    assert len(lines) <= len(POINTS) + len(MODELS) + 8, printed
    # No live display: its table (with a running 'batch loss' column) never appears, and the
    # progress lines before the final summary are plain text without box drawing.
    assert "batch loss" not in printed
    done = next((i for i, line in enumerate(lines) if line.startswith("done")), len(lines))
    for line in lines[:done]:
        assert not re.search("[\u2500-\u257f]", line), line


# ---------------------------------------------------------------------------
# Dry run.


def hand_param_count(width, depth=2, c_in=1, classes=10):
    count = 9 * c_in * width + width
    count += (depth - 1) * (9 * width * width + width)
    return count + width * classes + classes


def step_flops(recipe) -> float:
    """XLA's FLOPs of the recipe's lockstep step, compiled here for abstract inputs."""
    import jax
    import jax.numpy as jnp

    from taylorcli.data import recipe_spec
    from taylorcli.engine.costs import compiled_flops
    from taylorcli.engine.lockstep import build_engine, fresh_state, initial_params, \
        make_train_step
    from taylorcli.models import build_network

    spec = recipe_spec(recipe)
    network = build_network(recipe.model, spec.num_classes)
    engine = build_engine(recipe, spec, network)
    state = jax.eval_shape(lambda: fresh_state(engine, initial_params(
        network, recipe.seed, spec.image_shape)))
    n = spec.train_size
    args = (jax.ShapeDtypeStruct((n,), jnp.int32),
            jax.ShapeDtypeStruct((n, *spec.image_shape), jnp.uint8),
            jax.ShapeDtypeStruct((n,), jnp.int32))
    return compiled_flops(jax.jit(make_train_step(engine, recipe.seed)).lower(state, *args).compile())


def test_dry_run(recipe_file, tmp_path):
    out = tmp_path / "dry"
    result = run_cli("train", recipe_file, "--dry-run", "--out", out, "--set", "model.width=40")
    assert result.returncode == 0, result.stderr
    assert not out.exists(), "a dry run must not write the run directory"
    params = hand_param_count(40)
    assert params > 1000
    match = re.search(r"parameters per model\D*?([\d,]+)", result.stdout)
    assert match, result.stdout
    assert int(match.group(1).replace(",", "")) == params
    flops = re.search(r"FLOPs per lockstep step\D*?([\d.]+(?:e[+-]?\d+)?)", result.stdout)
    assert flops, result.stdout
    # What the dry run prints is XLA's count for the lockstep step the run would compile...
    recipe = load_recipe(recipe_file, ["model.width=40"])
    assert float(flops.group(1)) == pytest.approx(step_flops(recipe), rel=1e-3)
    # ...and XLA's count of the full network's step alone is forward plus backward: about
    # three forward passes of the batch of 32, counted by hand (a multiply-add is 2 FLOPs).
    forward = 2 * 32 * (10 * 10 * 9 * 1 * 40 + 8 * 8 * 9 * 40 * 40 + 40 * 10)
    alone = step_flops(load_recipe(recipe_file, ["model.width=40", "taylor.orders=[]"]))
    assert 2.5 * forward <= alone <= 3.5 * forward, alone / forward


# ---------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr, no traceback.


def assert_bad_input(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("taylorcli: error: "), err
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in err, err


@pytest.mark.slow
def test_missing_recipe_file_real_process(tmp_path):
    proc = run_process("train", tmp_path / "nope.yaml", "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taylorcli: error: "), proc.stderr
    assert "nope.yaml" in lines[0]
    assert not (tmp_path / "out").exists()


# --set flags that make a recipe bad, and what the one error line must name.
BAD_SETS = {
    "misspelt-key": (["optim.lrr=0.1"], ["optim.lrr", "did you mean 'optim.lr'"]),
    "unknown-set-path": (["nosuch.key=1"], ["--set nosuch.key=1"]),
    "string-for-int": (["train.epochs=ten"], ["train.epochs", "integer"]),
    "bool-for-int": (["train.batch_size=true"], ["train.batch_size"]),
    "list-for-str": (["model.arch=[cnn]"], ["model.arch"]),
    "negative-lr": (["optim.lr=-0.1"], ["optim.lr", "> 0"]),
    "order-zero": (["taylor.orders=[0,1]"], ["taylor.orders", ">= 1"]),
    "momentum-one": (["optim.momentum=1.0"], ["optim.momentum"]),
    "unknown-arch": (["model.arch=resnet"], ["model.arch", "cnn, wrn, mlp"]),
    "unknown-dataset": (["data.dataset=Not-A-Dataset"], ["data.dataset", "digits"]),
    "missing-tfds-copy": (["data.dataset=mnist", "data.data_dir=/nonexistent"], ["mnist not found", "tfds build mnist"]),
    "wrn-depth": (["model.arch=wrn", "model.depth=15"], ["model.depth", "6n+4"]),
    "decay-after-end": (["optim.decay_epochs=[99]"], ["optim.decay_epochs"]),
    "whole-section": (["optim=3"], ["--set optim=3", "section"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_bad_override_matrix(case, recipe_file, tmp_path):
    out = tmp_path / "out"
    sets, needles = BAD_SETS[case]
    args = ["train", str(recipe_file), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert_bad_input(run_cli(*args), *needles)
    assert not out.exists(), "nothing is written for bad input"


def test_yaml_object_tags_are_not_constructed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_bad_input(run_cli("train", path, "--out", tmp_path / "o"), "evil.yaml")
    assert not marker.exists()


@pytest.mark.parametrize("case", ["missing", "malformed", "unknown-key", "bad-set", "set-no-equals",
                                  "batch-too-large", "missing-data"])
def test_bad_recipe_input(case, recipe_file, tmp_path):
    out = tmp_path / "out"
    path, sets, needles = recipe_file, [], []
    if case == "missing":
        path, needles = tmp_path / "nope.yaml", ["nope.yaml"]
    elif case == "malformed":
        path = tmp_path / "bad.yaml"
        path.write_text("model:\n  arch: cnn\n    depth: [1, 2\n")
        needles = ["bad.yaml"]
    elif case == "unknown-key":
        path = tmp_path / "unknown.yaml"
        path.write_text(recipe_file.read_text() + "extra_section:\n  x: 1\n")
        needles = ["unknown.yaml", "extra_section"]
    elif case == "bad-set":
        sets, needles = ["optim.lr=-1"], ["--set optim.lr=-1", "optim.lr"]
    elif case == "set-no-equals":
        sets, needles = ["optim.lr"], ["--set optim.lr"]
    elif case == "batch-too-large":
        sets, needles = ["data.train_limit=64", "train.batch_size=128"], ["train.batch_size", "64"]
    elif case == "missing-data":
        missing = tmp_path / "no-cifar-here.tar.gz"
        sets, needles = ["data.dataset=cifar10", f"data.archive={missing}"], ["cifar10", str(missing)]
    args = ["train", str(path), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert_bad_input(run_cli(*args), *needles)
    assert not out.exists(), "nothing is written for bad input"


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_unwritable_out(where, recipe_file, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    out = blocker / "run" if where == "under-a-file" else blocker
    result = run_cli("train", recipe_file, "--out", out)
    assert_bad_input(result, "--out", str(out))
    assert blocker.read_text() == "not a directory\n"


def snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_existing_run_of_another_recipe_is_refused_and_untouched(main_run, recipe_file, tmp_path):
    _, src = main_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = snapshot(out)
    result = run_cli("train", recipe_file, "--out", out, "--set", "optim.lr=0.05")
    assert_bad_input(result, "--no-resume", "optim.lr")
    assert snapshot(out) == before


@pytest.mark.parametrize("flags", [[], ["--resume"]])
def test_rerun_of_a_finished_run_resumes_and_changes_nothing(flags, main_run, recipe_file, tmp_path):
    _, src = main_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = {p: b for p, b in snapshot(out).items() if p.parts[0] != "checkpoints"}
    result = run_cli("train", recipe_file, "--out", out, *flags)
    assert result.returncode == 0, result.stderr
    after = {p: b for p, b in snapshot(out).items() if p.parts[0] != "checkpoints"}
    assert after.keys() - {Path(".lock")} == before.keys() - {Path(".lock")}
    assert all(after[p] == before[p] for p in before if p.name != ".lock")


def test_no_resume_starts_over(main_run, recipe_file, tmp_path):
    _, src = main_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    stale = out / "logits" / "step99999999.npz"
    shutil.copy(next((out / "logits").glob("*.npz")), stale)
    result = run_cli("train", recipe_file, "--out", out, "--no-resume", "--set",
                     "taylor.orders=[1]", "--set", "train.epochs=1")
    assert result.returncode == 0, result.stderr
    m = pd.read_csv(out / "metrics.csv")
    # The new run only: full and order1, one epoch of 4 steps, evaluated at 0 and 4.
    assert sorted(set(m["model"])) == ["full", "order1"]
    assert sorted(set(m["step"])) == [0, 4]
    assert len(m) == 4
    assert set(pd.read_csv(out / "layers.csv")["model"]) == {"full", "order1"}
    assert yaml.safe_load((out / "recipe.yaml").read_text())["taylor"]["orders"] == [1]
    assert not stale.exists()
    assert sorted(saved_logits(out)) == [0, 4]


@pytest.mark.parametrize("args, needle", [
    (["train", "--bogus"], "--bogus"),
    (["spawn", "runs/none", "--at", "1", "--children", "-1"], "--children"),
    (["spawn", "runs/none"], "--at"),
])
def test_usage_errors_of_the_console_command_are_one_line(args, needle):
    """Typer's own flag errors (unknown option, bad value, missing option) are one line too."""
    done = run_cli(*args)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("taylorcli: error:")
