"""Your own model and data: a flax linen module, an nnx module or a stax pair by import path
or as an object, TFDS and .npz datasets, Adam and optax's schedules, and the Python API that
runs exactly what the CLI runs."""

import math
import re
import shutil
import signal
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import yaml

import user_nets
from conftest import TINY, run_cli, run_signalled, table_without_clock
from taylorcli.models import build_network, inspect
from taylorcli.recipe import recipe_from_dict
from taylorcli.taylor import taylorize, taylorize_nested

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
USER = {**TINY, "name": "user", "model": {"arch": "user_nets:TinyResNet", "kwargs": {"channels": 4},
                                           "module_path": str(HERE)},
        "train": {"epochs": 2, "batch_size": 32}}


def taylorcli(*args, cwd=None, timeout=None):
    """The command line, in this process."""
    return run_cli(*args, cwd=cwd)


def one_line(proc, *needles):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_recipe(tmp_path, raw, name="user.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---------------------------------------------------------------------------
# the Taylor expansion of a user's module


@pytest.mark.parametrize("arch, kwargs, orders", [
    pytest.param("user_nets:TinyResNet", {"channels": 3}, (1, 2, 3), id="tiny-resnet",
                 marks=pytest.mark.slow),
    pytest.param("resnet_nobn:ResNetNoBN", {"channels": 3, "blocks": 2}, (2,), id="bundled-resnet"),
    pytest.param("resnet_nobn:ResNetNoBN", {"channels": 3, "blocks": 2}, (1, 3),
                 id="bundled-resnet-orders1,3", marks=pytest.mark.slow)])
def test_a_user_modules_taylor_models_equal_nested_jvps(arch, kwargs, orders):
    folder = HERE if arch.startswith("user_nets") else ROOT / "recipes"
    cfg = recipe_from_dict({"model": {"arch": arch, "kwargs": kwargs,
                                      "module_path": str(folder)}}).model
    net = build_network(cfg, 10)
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1), jnp.float64)
        params0 = jax.tree.map(lambda a: a.astype(jnp.float64),
                               net.init(jax.random.key(0), (8, 8, 1)))
        rng = np.random.default_rng(2)
        params = jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape), params0)
        apply = net.apply
        for k in orders:
            fast, ref = taylorize(apply, params0, k), taylorize_nested(apply, params0, k)
            np.testing.assert_allclose(fast(params, x), ref(params, x), rtol=1e-10, atol=1e-10)
            loss = lambda f: lambda p: jnp.sum(f(p, x) ** 2)
            g_fast, g_ref = jax.grad(loss(fast))(params), jax.grad(loss(ref))(params)
            for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_layers_are_the_modules_top_level_submodules_in_call_order():
    cfg = recipe_from_dict({"model": {"arch": "resnet_nobn:ResNetNoBN",
                                      "kwargs": {"blocks": 3},
                                      "module_path": str(ROOT / "recipes")}}).model
    assert inspect(build_network(cfg, 10), (12, 12, 1), 10) == \
        ["Conv_0", "Block_0", "Block_1", "Block_2", "Dense_0"]


# ---------------------------------------------------------------------------
# a whole run of a user's module: train, kill -9, resume, spawn, report without the module


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """The user module trained end to end."""
    tmp = tmp_path_factory.mktemp("user")
    recipe = write_recipe(tmp, {**USER, "checkpoint": {"every_steps": 2}})
    straight = tmp / "straight"
    done = taylorcli("train", recipe, "--out", straight)
    assert done.returncode == 0, done.stderr
    return tmp, recipe, straight


@pytest.mark.slow
def test_a_user_module_run_resumes_exactly_after_a_kill(user_run):
    tmp, recipe, straight = user_run
    killed = tmp / "killed"
    proc = run_signalled(["train", recipe, "--out", killed], 5, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = taylorcli("train", recipe, "--out", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "trained steps 4..8" in resumed.stdout or "trained steps 2..8" in resumed.stdout
    for table in ("metrics.csv", "layers.csv"):
        assert table_without_clock(straight / table) == table_without_clock(killed / table)
    layers = pd.read_csv(straight / "layers.csv")
    assert list(dict.fromkeys(layers["layer"])) == ["Conv_0", "Conv_1", "Conv_2", "Dense_0"]


@pytest.mark.slow
def test_dry_run_and_spawn_of_a_user_module(user_run, tmp_path):
    tmp, recipe, straight = user_run
    dry = taylorcli("train", recipe, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    params = 9 * 1 * 4 + 4 + 2 * (9 * 4 * 4 + 4) + 4 * 10 + 10
    assert re.search(rf"parameters per model\D*{params:,}", dry.stdout), dry.stdout
    sweep = taylorcli("spawn", straight, "--at", "1", "--children", "2", "--out", tmp_path / "sweep")
    assert sweep.returncode == 0, sweep.stderr
    children = pd.read_csv(tmp_path / "sweep" / "at1" / "children.csv")
    assert children["relu_distance"].notna().all() and (children["relu_distance"] > 0).any()


def test_report_and_compare_never_import_the_users_module(user_run, tmp_path, monkeypatch):
    tmp, _, straight = user_run
    copy = tmp_path / "runs" / "user"
    shutil.copytree(straight, copy)
    # The module cannot be imported here: it was only ever read from disk.
    monkeypatch.setitem(sys.modules, "user_nets", None)
    for args in (["report", tmp_path / "runs", "--out", tmp_path / "report", "--format", "csv"],
                 ["compare", copy]):
        proc = taylorcli(*args)
        assert proc.returncode == 0, proc.stderr
    table1 = pd.read_csv(tmp_path / "report" / "table1.csv")
    assert table1.loc[0, "architecture"].startswith("user_nets:TinyResNet")
    assert table1.loc[0, "params"] == 9 * 4 + 4 + 2 * (9 * 16 + 4) + 4 * 10 + 10


# ---------------------------------------------------------------------------
# modules that cannot be Taylorized, and bad import paths


@pytest.mark.parametrize("model, needle", [
    ({"arch": "no_such_module_xyz:Net"}, "cannot import 'no_such_module_xyz'"),
    ({"arch": "user_nets:Missing"}, "has no attribute 'Missing'"),
    ({"arch": "user_nets:not_a_module"}, "a flax linen Module class, a flax nnx Module class"),
    ({"arch": "user_nets:WithBatchNorm"}, "batch norm"),
    ({"arch": "user_nets:WithDropout"}, "random numbers"),
    ({"arch": "user_nets:WrongShape"}, "expected logits of shape (batch, 10)"),
    ({"arch": "user_nets:NoClasses", "kwargs": {"width": 3}}, "key model.kwargs"),
    ({"arch": "user_nets:NoClasses", "kwargs": {"outputs": 4}}, "expected logits of shape (batch, 10)"),
], ids=["no-module", "no-attribute", "not-a-module", "batch-norm", "dropout", "wrong-shape",
        "bad-kwargs", "too-few-logits"])
def test_modules_taylorcli_cannot_train_are_one_line(model, needle, tmp_path):
    raw = {**USER, "model": {"module_path": str(HERE), **model}}
    for args in (["--dry-run"], ["--out", tmp_path / "run"]):
        proc = taylorcli("train", write_recipe(tmp_path, raw), *args)
        one_line(proc, "model.", needle)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_the_recipe_folder_is_importable(tmp_path):
    """A module file beside the recipe: found without module_path, recorded in recipe.yaml."""
    shutil.copy(HERE / "user_nets.py", tmp_path / "my_nets.py")
    raw = {**USER, "model": {"arch": "my_nets:NoClasses", "kwargs": {"outputs": 10}}}
    recipe = write_recipe(tmp_path, raw)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = taylorcli("train", recipe, "--out", elsewhere / "run", "--set", "train.epochs=1",
                     cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((elsewhere / "run" / "recipe.yaml").read_text())
    assert saved["model"]["module_path"] == str(tmp_path)


# ---------------------------------------------------------------------------
# data: a TFDS dataset in its on-disk format, and an .npz


@pytest.mark.slow
def test_runs_on_a_tfds_dataset_and_on_an_npz(tmp_path):
    from test_data import _write_tfds_copy

    rng = np.random.default_rng(7)
    train, test = (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8) for n in (64, 16))
    ys = (rng.integers(0, 10, 64), rng.integers(0, 10, 16))
    _write_tfds_copy(tmp_path / "tfds", "mnist", {"train": (train, ys[0]), "test": (test, ys[1])},
                     shape=(28, 28, 1))
    np.savez(tmp_path / "mine.npz", x_train=train[:, ::2, ::2, 0], y_train=ys[0] % 3,
             x_test=test[:, ::2, ::2, 0], y_test=ys[1] % 3)
    base = {**TINY, "train": {"epochs": 1, "batch_size": 16}, "data": {"pad": 2, "flip": False}}
    cases = {"mnist": ({"dataset": "mnist", "data_dir": str(tmp_path / "tfds")}, (28, 28, 1), 10),
             "npz": ({"dataset": "npz", "path": str(tmp_path / "mine.npz")}, (14, 14, 1), 3)}
    for name, (data, shape, classes) in cases.items():
        raw = {**base, "name": name, "data": {**base["data"], **data}}
        proc = taylorcli("train", write_recipe(tmp_path, raw, f"{name}.yaml"), "--out",
                         tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        saved = yaml.safe_load((tmp_path / name / "recipe.yaml").read_text())
        x = (train if name == "mnist" else train[:, ::2, ::2, :]).astype(np.float64) / 255
        assert saved["data"]["mean"] == pytest.approx([x.mean()])  # from the training set
        assert saved["data"]["std"] == pytest.approx([x.std()])
        info = yaml.safe_load((tmp_path / name / "run.json").read_text())
        assert tuple(info["dataset"]["image_shape"]) == shape
        assert info["dataset"]["num_classes"] == classes
        logits = np.load(tmp_path / name / "logits" / "step00000004.npz")
        assert logits["full"].shape == (16, classes)


def test_missing_or_malformed_data_is_one_line(tmp_path):
    base = {**TINY, "train": {"epochs": 1, "batch_size": 16}}
    for data, needle in (({"dataset": "npz", "path": str(tmp_path / "none.npz")}, "no such file"),
                         ({"dataset": "fashion_mnist", "data_dir": str(tmp_path)},
                          "fashion_mnist not found")):
        proc = taylorcli("train", write_recipe(tmp_path, {**base, "data": data}), "--out",
                         tmp_path / "run")
        one_line(proc, needle)


# ---------------------------------------------------------------------------
# Adam and optax's schedules


def test_adam_steps_equal_adam_written_out(tiny_recipe):
    from test_train import ce_loss, lockstep

    recipe = tiny_recipe("optim.name=adam", "optim.lr=0.01", "optim.grad_clip=null",
                         "taylor.orders=[]", "data.pad=0", "optim.b1=0.8", "optim.b2=0.99")
    ds, spec, engine, state, step_fn, train_x, train_y = lockstep(recipe)
    from taylorcli.engine.lockstep import epoch_permutation

    f = build_network(recipe.model, spec.num_classes).apply
    perm = np.asarray(epoch_permutation(recipe.seed, 0, len(ds.train_y)))
    params = jax.tree.map(np.asarray, state.params["full"])
    m = jax.tree.map(np.zeros_like, params)
    v = jax.tree.map(np.zeros_like, params)
    from taylorcli.data import standardize

    for t in range(1, 4):
        idx = perm[(t - 1) * 32:t * 32]
        x = standardize(ds.train_x[idx], mean=ds.mean, std=ds.std)
        g = jax.grad(lambda p: ce_loss(f(p, x), ds.train_y[idx]))(params)
        m = jax.tree.map(lambda m, g: 0.8 * m + 0.2 * np.asarray(g), m, g)
        v = jax.tree.map(lambda v, g: 0.99 * v + 0.01 * np.asarray(g) ** 2, v, g)
        params = jax.tree.map(lambda p, m, v: p - 0.01 * (m / (1 - 0.8 ** t)) /
                              (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8), params, m, v)
        state, _ = step_fn(state, perm, train_x, train_y)
        for got, want in zip(jax.tree.leaves(state.params["full"]), jax.tree.leaves(params)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("schedule, sets", [
    ("cosine", ["optim.final_lr_factor=0.1"]),
    ("warmup_cosine", ["optim.warmup_epochs=2", "optim.final_lr_factor=0.0"]),
])
def test_cosine_schedules_follow_their_formulas(schedule, sets, tiny_recipe):
    from taylorcli.engine.optimizer import make_schedule

    recipe = tiny_recipe(f"optim.schedule={schedule}", "train.epochs=10", "optim.lr=0.4", *sets)
    spe, total = 5, 50
    lr = make_schedule(recipe.optim, spe, recipe.train.epochs)
    for step in (0, 3, 10, 25, 49, 50):
        if schedule == "cosine":
            want = 0.4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
        elif step < 10:
            want = 0.4 * step / 10
        else:
            want = 0.4 * 0.5 * (1 + math.cos(math.pi * (step - 10) / (total - 10)))
        assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=1e-7), step


def test_spawn_keeps_the_parents_optimizer(tiny_recipe):
    from taylorcli.errors import RecipeError
    from taylorcli.spawn.spawned_run import check_optimizer_state

    parent = tiny_recipe("optim.name=adam", "optim.lr=0.001")
    child = tiny_recipe("optim.name=sgd")
    with pytest.raises(RecipeError, match="optim.name"):
        check_optimizer_state(parent, child)
    check_optimizer_state(parent, tiny_recipe("optim.name=adam", "optim.lr=0.01"))


# ---------------------------------------------------------------------------
# the Python API


def _readme_example() -> str:
    """The notebook example in taylorcli/README.md, between its marker comments."""
    text = (ROOT / "taylorcli" / "README.md").read_text()
    block = re.search(r"```python\n(# notebook example.*?)```", text, re.S)
    assert block, "README.md has no ```python block starting with '# notebook example'"
    return block.group(1)


@pytest.mark.slow
def test_the_readme_notebook_example_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), "taylorcli/README.md", "exec"), {})
    assert (tmp_path / "runs" / "digits-short" / "metrics.csv").is_file()


def test_train_returns_what_load_run_reads_and_accepts_every_recipe_form(tmp_path):
    import taylorcli

    raw = {**TINY, "train": {"epochs": 1, "batch_size": 32}}
    run = taylorcli.train(raw, out=tmp_path / "a", set={"optim.lr": 0.05, "eval.steps": [2]})
    again = taylorcli.load_run(tmp_path / "a")
    pd.testing.assert_frame_equal(run.metrics, again.metrics)
    assert run.recipe["optim"]["lr"] == 0.05 and run.config.eval.steps == (2,)
    assert sorted(run.metrics["step"].unique()) == [0, 2, 4]
    assert set(run.logits(4)) == {"full", "order1", "order2"}
    assert run.logits(4)["full"].shape == (64, 10)
    assert run.kernels is None and run.children is None
    path = write_recipe(tmp_path, raw, "tiny.yaml")
    by_path = taylorcli.train(path, out=tmp_path / "b", set=["optim.lr=0.05", "eval.steps=[2]"])
    clockless = lambda r: r.metrics.drop(columns=["wall_time"])
    pd.testing.assert_frame_equal(clockless(by_path), clockless(run))  # the same run, bit for bit
    by_recipe = taylorcli.train(run.config, out=tmp_path / "c")
    pd.testing.assert_frame_equal(clockless(by_recipe), clockless(run))
    from taylorcli.errors import RecipeError

    with pytest.raises(RecipeError, match="did you mean 'optim.lr'"):
        taylorcli.train(raw, out=tmp_path / "d", set={"optim.lrr": 1})


# ---------------------------------------------------------------------------
# flax nnx modules and stax pairs, by import path and as objects


NNX = {"arch": "user_nets:NnxMLP", "kwargs": {"din": 144, "hidden": 8}}
STAX = {"arch": "user_nets:StaxCNN", "kwargs": {"channels": 3}}


@pytest.mark.parametrize("model", [NNX, STAX], ids=["nnx", "stax"])
def test_nnx_and_stax_taylor_models_equal_nested_jvps(model):
    cfg = recipe_from_dict({"model": {**model, "module_path": str(HERE)}}).model
    net = build_network(cfg, 10)
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (3, 12, 12, 1), jnp.float64)
        params0 = jax.tree.map(lambda a: a.astype(jnp.float64),
                               net.init(jax.random.key(0), (12, 12, 1)))
        rng = np.random.default_rng(3)
        params = jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape), params0)
        for k in (1, 2, 3):
            fast, ref = taylorize(net.apply, params0, k), taylorize_nested(net.apply, params0, k)
            np.testing.assert_allclose(fast(params, x), ref(params, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("model, layers", [(NNX, ["hidden", "out"]),
                                           (STAX, ["layer00", "layer02", "layer04", "layer07"])],
                         ids=["nnx", "stax"])
def test_nnx_and_stax_train_by_recipe(model, layers, tmp_path):
    raw = {**USER, "name": "other", "model": {**model, "module_path": str(HERE)},
           "train": {"epochs": 1, "batch_size": 32}}
    proc = taylorcli("train", write_recipe(tmp_path, raw), "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert set(m["model"]) == {"full", "order1", "order2"} and not m["diverged"].any()
    # order 1 and 2 agree with the network at θ0 and move with it
    start = m[m["step"] == 0].set_index("model")
    assert start["test_loss"].nunique() == 1
    assert list(dict.fromkeys(pd.read_csv(tmp_path / "run" / "layers.csv")["layer"])) == layers


@pytest.mark.parametrize("obj, kwargs", [(user_nets.NnxMLP, {"din": 144, "hidden": 8}),
                                         (user_nets.StaxCNN, {"channels": 3}),
                                         (user_nets.TinyResNet, {"channels": 3})],
                         ids=["nnx", "stax", "linen"])
def test_the_api_takes_each_kind_as_an_object(obj, kwargs, tmp_path):
    import taylorcli

    raw = {**TINY, "train": {"epochs": 1, "batch_size": 32}, "model": {"kwargs": kwargs}}
    run = taylorcli.train(raw, out=tmp_path / "run", model=obj, progress=False)
    assert run.recipe["model"]["arch"] == f"user_nets:{obj.__name__}"  # recorded for resumes
    assert set(run.metrics["model"]) == {"full", "order1", "order2"}
    assert np.isfinite(run.metrics["test_loss"]).all()


@pytest.mark.parametrize("model, needle", [
    ({"arch": "user_nets:NnxWithBatchNorm", "kwargs": {"din": 144}}, "BatchStat"),
    ({"arch": "user_nets:NnxWithDropout", "kwargs": {"din": 144}}, "random state"),
    ({"arch": "user_nets:StaxWithDropout"}, "random numbers"),
    ({"arch": "user_nets:IntegerLogits"}, "floating-point logits"),
    ({"arch": "user_nets:ExitsOnCall"}, "sys.exit(0)"),
], ids=["nnx-batch-norm", "nnx-dropout", "stax-dropout", "integer-logits", "sys-exit"])
def test_networks_taylorcli_cannot_train_are_one_line_for_each_kind(model, needle, tmp_path):
    raw = {**USER, "model": {"module_path": str(HERE), **model}}
    proc = taylorcli("train", write_recipe(tmp_path, raw), "--out", tmp_path / "run")
    one_line(proc, "model.arch", needle)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_an_input_too_small_for_the_network_is_said_so(tmp_path):
    np.savez(tmp_path / "small.npz", x_train=np.zeros((64, 8, 8), np.uint8) + 7,
             y_train=np.arange(64) % 10, x_test=np.zeros((16, 8, 8), np.uint8),
             y_test=np.arange(16) % 10)
    raw = {**USER, "model": {"arch": "user_nets:TooSmallInput", "module_path": str(HERE)},
           "data": {"dataset": "npz", "path": str(tmp_path / "small.npz"), "pad": 0,
                    "flip": False}}
    proc = taylorcli("train", write_recipe(tmp_path, raw), "--out", tmp_path / "run")
    one_line(proc, "model.arch", "too small", "(8, 8, 1)")


def test_the_api_reads_a_string_as_one_override_and_refuses_other_types(tmp_path):
    import taylorcli
    from taylorcli.errors import RecipeError

    run = taylorcli.train({**TINY, "train": {"epochs": 1, "batch_size": 32}},
                          out=tmp_path / "a", set="optim.lr=0.05", progress=False)
    assert run.config.optim.lr == 0.05
    with pytest.raises(RecipeError, match="set: expected"):
        taylorcli.train(TINY, out=tmp_path / "b", set=3)
    from taylorcli.errors import RunDirError

    with pytest.raises(RunDirError, match="expected an integer step"):
        run.logits("x")
