"""`taylorcli spawn`: spawned models, children and re-expansion against independent computations."""

import dataclasses
import io
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, table_without_clock
from taylorcli.analyses.training import train_recipe as train
from taylorcli.data import load_for_recipe as load_data, with_data_stats
from taylorcli.engine.lockstep import LockstepModel, epoch_permutations, initial_params, \
    lockstep_state, reexpands_at
from taylorcli.engine.setup import build_setup
from taylorcli.errors import Stopped
from taylorcli.metrics import error_barrier, function_distance
from taylorcli.recipe import RecipeError
from taylorcli.run.progress import PlainProgress
from taylorcli.run.start import parent_network, replay
from taylorcli.spawn.spawned_run import parent_recipe, spawn_recipe

EPOCHS = "train.epochs=3"


class Quiet(PlainProgress):
    """Progress that prints nothing."""

    def __init__(self):
        super().__init__(stream=io.StringIO())


@pytest.fixture(scope="module")
def parent(tmp_path_factory, tiny_recipe):
    """A 3-epoch tiny run with a checkpoint kept at epoch 1."""
    out = tmp_path_factory.mktemp("parent") / "run"
    train(tiny_recipe(EPOCHS, "checkpoint.keep_epochs=[1]", "checkpoint.keep=1"), str(out), Quiet())
    return out


def spawned(parent, out, epoch, orders=(1, 2), **kw):
    recipe = spawn_recipe(parent_recipe(parent), parent, epoch, orders, **kw)
    train(recipe, str(out), Quiet())
    return pd.read_csv(out / "metrics.csv"), recipe


def test_spawn_at_zero_reproduces_the_parents_own_taylor_models(parent, tmp_path):
    metrics, _ = spawned(parent, tmp_path / "at0", 0)
    theirs = pd.read_csv(parent / "metrics.csv").set_index(["model", "step"])
    for k in (1, 2):
        ours = metrics[metrics["model"] == f"spawn@0/order{k}"].set_index("step")
        assert list(ours.index) == [0, 4, 8, 12]
        for step, row in ours.iterrows():
            ref = theirs.loc[(f"order{k}", step)]
            for col in ("test_acc", "test_loss", "cos_func", "train_loss"):
                assert row[col] == pytest.approx(ref[col], rel=1e-5, abs=1e-6, nan_ok=True), col
        with np.load(tmp_path / "at0" / "logits" / "step00000012.npz") as a, \
                np.load(parent / "logits" / "step00000012.npz") as b:
            np.testing.assert_allclose(a[f"spawn@0__order{k}"], b[f"order{k}"], rtol=1e-5,
                                       atol=1e-5)


def test_spawned_run_continues_the_parent_and_expands_there(parent, tmp_path):
    metrics, recipe = spawned(parent, tmp_path / "at1", 1)
    assert metrics["step"].min() == 4 and metrics["epoch"].min() == 1
    first = metrics[metrics["step"] == 4]
    # At the spawn point every model is the parent's network: same logits, same accuracy.
    assert first["test_acc"].nunique() == 1
    parent_rows = pd.read_csv(parent / "metrics.csv").set_index(["model", "step"])
    for step in (4, 8, 12):
        ours = metrics[(metrics["model"] == "full") & (metrics["step"] == step)].iloc[0]
        assert ours["test_acc"] == pytest.approx(parent_rows.loc[("full", step), "test_acc"])
        assert ours["test_loss"] == pytest.approx(parent_rows.loc[("full", step), "test_loss"],
                                                  rel=1e-5)
    later = metrics[metrics["step"] == 12].set_index("model")
    assert later.loc["spawn@1/order1", "order"] == 1 and later.loc["spawn@1/order2", "order"] == 2


def test_replay_matches_the_checkpointed_network(parent, tiny_recipe):
    """Spawning from an epoch without a checkpoint replays the parent from an earlier one."""
    recipe = parent_recipe(parent)
    setup = build_setup(recipe, load_data(recipe))
    saved, _, at = parent_network(setup, parent, 4)
    assert at == 4
    theta0, opt0, at0 = parent_network(setup, parent, 3)
    assert at0 == 0  # no checkpoint before epoch 1: from the seed
    replayed, _ = replay(setup, theta0, opt0, 0, 4)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(replayed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def engine_and_state(recipe, specs, streams=(0,)):
    ds = load_data(recipe)
    setup = build_setup(with_data_stats(recipe, ds), ds)
    engine = dataclasses.replace(setup.engine, models=tuple(specs), streams=streams)
    theta0 = initial_params(setup.network, recipe.seed, setup.spec.image_shape)
    state = lockstep_state(engine, 0, theta0, engine.optimizer.init(theta0))
    return ds, engine, state


def run_steps(recipe, engine, state, ds, steps):
    from taylorcli.engine.lockstep import make_train_step

    step_fn = jax.jit(make_train_step(engine, recipe.seed))
    x, y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    for t in range(steps):
        perms = epoch_permutations(engine, recipe.seed, t // engine.steps_per_epoch, len(y))
        state, _ = step_fn(state, perms, x, y)
    return jax.device_get(state)


def test_children_with_identical_seeds_are_identical_and_others_differ(tiny_recipe):
    recipe = tiny_recipe()
    specs = [LockstepModel("full"), LockstepModel("child0", stream=1), LockstepModel("child1", stream=1),
             LockstepModel("child2", stream=2)]
    ds, engine, state = engine_and_state(recipe, specs, streams=(0, 7, 8))
    out = run_steps(recipe, engine, state, ds, 6)
    leaves = {n: jax.tree.leaves(out.params[n]) for n in engine.names}
    for a, b in zip(leaves["child0"], leaves["child1"]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(leaves["child0"], leaves["child2"]))
    assert any(not np.array_equal(a, b) for a, b in zip(leaves["child0"], leaves["full"]))


def test_reexpanding_every_step_is_ordinary_training(tiny_recipe):
    """K = 1: the order-k model re-expanded at its own parameters before every step is the network."""
    recipe = tiny_recipe()
    specs = [LockstepModel("full"), LockstepModel("r1", 1, reexpand=("every", 1)),
             LockstepModel("r2", 2, reexpand=("every", 1)), LockstepModel("plain", 1)]
    ds, engine, state = engine_and_state(recipe, specs)
    out = run_steps(recipe, engine, state, ds, 6)
    for name in ("r1", "r2"):
        for a, b in zip(jax.tree.leaves(out.params["full"]), jax.tree.leaves(out.params[name])):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    # ... while the never re-expanded model has left the network's trajectory.
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(out.params["full"]), jax.tree.leaves(out.params["plain"])))
    assert gap > 1e-4


def test_reexpansion_schedules():
    every = [s for s in range(20) if reexpands_at(("every", 3), jnp.asarray(s))]
    doubling = [s for s in range(40) if reexpands_at(("doubling", 2), jnp.asarray(s))]
    assert every == [3, 6, 9, 12, 15, 18]
    assert doubling == [2, 6, 14, 30]  # intervals 2, 4, 8, 16


def test_reexpanded_center_is_the_parameters_at_the_last_reexpansion(tiny_recipe):
    recipe = tiny_recipe()
    specs = [LockstepModel("full"), LockstepModel("r", 2, reexpand=("every", 4))]
    ds, engine, state = engine_and_state(recipe, specs)
    after3 = run_steps(recipe, engine, state, ds, 3)  # at step 3: still expanded at θ0
    after4 = run_steps(recipe, engine, state, ds, 4)  # at step 4: re-expanded at θ(4)
    for c, t0 in zip(jax.tree.leaves(after3.centers["r"]), jax.tree.leaves(after3.theta0)):
        np.testing.assert_array_equal(c, t0)
    for c, p in zip(jax.tree.leaves(after4.centers["r"]), jax.tree.leaves(after4.params["r"])):
        np.testing.assert_array_equal(c, p)


def test_reexpanding_every_step_evaluates_as_the_network(tiny_recipe):
    """At a re-expansion point the model is f(θ): its logits equal the network's at θ."""
    from taylorcli.engine.lockstep import make_eval_logits

    recipe = tiny_recipe()
    specs = [LockstepModel("full"), LockstepModel("r1", 1, reexpand=("every", 1))]
    ds, engine, state = engine_and_state(recipe, specs)
    out = run_steps(recipe, engine, state, ds, 4)
    logits = make_eval_logits(engine)(out, jnp.asarray(ds.test_x[:16], jnp.float32))
    np.testing.assert_allclose(logits["r1"], logits["full"], rtol=1e-5, atol=1e-6)


def test_error_barrier_closed_forms():
    assert error_barrier([0.1, 0.1, 0.1]) == 0
    assert error_barrier([0.1, 0.5, 0.3]) == pytest.approx(0.5 - 0.2)
    assert error_barrier(np.linspace(0.2, 0.4, 11)) == pytest.approx(0, abs=1e-12)
    # Below the line everywhere: no barrier (the maximum is at the ends, 0).
    assert error_barrier([0.3, 0.1, 0.3]) == pytest.approx(0)


def test_function_distance_of_independent_classifiers_is_about_one():
    rng = np.random.default_rng(0)
    n, c = 200_000, 10
    labels = rng.integers(0, c, n)

    def classifier(err):
        wrong = rng.random(n) < err
        pred = np.where(wrong, (labels + rng.integers(1, c, n)) % c, labels)
        return np.eye(c)[pred]

    a, b = classifier(0.3), classifier(0.2)
    assert function_distance(a, b, labels, c) == pytest.approx(1.0, abs=0.02)
    assert function_distance(a, a, labels, c) == 0


def test_children_metrics_against_direct_computation(parent, tmp_path):
    spawned(parent, tmp_path / "kids", 1, orders=(1,), children=2)
    table = pd.read_csv(tmp_path / "kids" / "children.csv")
    assert list(table["step"]) == [4, 8, 12]
    start = table.iloc[0]  # both children are the parent at the spawn point
    assert start["barrier"] == 0 and start["function_distance"] == 0
    assert start["relu_distance"] == 0
    # The last row's ReLU distance, recomputed here from the checkpointed children.
    from taylorcli.data import standardize
    from taylorcli.run.checkpoints import Checkpoints

    recipe = parent_recipe(tmp_path / "kids")
    ds = load_data(recipe)
    setup = build_setup(recipe, ds)
    ckpts = Checkpoints(tmp_path / "kids" / "checkpoints", read_only=True)
    state, _ = ckpts.restore(12, setup.abstract_state)
    ckpts.close()
    model = setup.network.module  # the flax linen CNN
    x = standardize(jnp.asarray(ds.test_x), mean=ds.mean, std=ds.std)

    def conv_outputs(params):
        # The CNN's pre-activations are its convolutions' outputs, as flax captures them.
        _, seen = model.apply({"params": params}, x, capture_intermediates=True,
                              mutable=["intermediates"])
        return [np.asarray(v["__call__"][0]).reshape(len(x), -1)
                for k, v in seen["intermediates"].items() if k.startswith("conv")]

    pa = [a > 0 for a in conv_outputs(state.params["child0"])]
    pb = [b > 0 for b in conv_outputs(state.params["child1"])]
    expected = sum((a != b).sum() for a, b in zip(pa, pb)) / sum(a.size for a in pa)
    assert table.iloc[-1]["relu_distance"] == pytest.approx(expected, rel=1e-6)
    logits = [model.apply({"params": state.params[c]}, x) for c in ("child0", "child1")]
    errs = [float(np.mean(np.argmax(l, -1) != ds.test_y)) for l in logits]
    assert table.iloc[-1]["test_err_a"] == pytest.approx(errs[0])
    assert table.iloc[-1]["test_err_b"] == pytest.approx(errs[1])
    # The barrier: test errors on the straight line between the children (11 points, α = 0
    # at child1), above the chord between their own errors, recomputed here.
    pa, pb = state.params["child0"], state.params["child1"]
    line = []
    for alpha in np.linspace(0.0, 1.0, 11):
        mix = jax.tree.map(lambda a, b: alpha * a + (1 - alpha) * b, pa, pb)
        line.append(float(np.mean(np.argmax(model.apply({"params": mix}, x), -1) != ds.test_y)))
    chord = np.linspace(line[0], line[-1], 11)
    assert table.iloc[-1]["barrier"] == pytest.approx(max(np.array(line) - chord), abs=1e-9)


@pytest.mark.slow
def test_cli_spawn_sweep_writes_the_summary_and_resumes(parent, tmp_path):
    args = ["spawn", str(parent), "--at", "0,1", "--order", "1", "--children", "2",
            "--reexpand-every", "2,inf", "--out", str(tmp_path / "sweep")]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    summary = pd.read_csv(tmp_path / "sweep" / "spawn.csv")
    assert set(summary["spawn_epoch"]) == {0, 1}
    assert set(summary["model"]) == {"full", "order1", "order1/every2", "child0", "child1"}
    final = pd.read_csv(tmp_path / "sweep" / "at1" / "metrics.csv")
    final = final[final["step"] == 12].set_index("model")
    row = summary[(summary["spawn_epoch"] == 1) & (summary["model"] == "order1")].iloc[0]
    assert row["test_acc"] == final.loc["spawn@1/order1", "test_acc"]
    parent_final = pd.read_csv(parent / "metrics.csv")
    parent_final = parent_final[parent_final["step"] == 12].set_index("model")
    assert row["parent_test_acc"] == parent_final.loc["order1", "test_acc"]
    assert (tmp_path / "sweep" / "spawn.png").stat().st_size > 1000
    assert "spawn epoch" in (tmp_path / "sweep" / "spawn.md").read_text()
    before = (tmp_path / "sweep" / "at1" / "metrics.csv").read_bytes()
    again = run_cli(*args)
    assert again.returncode == 0 and "nothing left to train (step 12)" in again.stdout
    assert (tmp_path / "sweep" / "at1" / "metrics.csv").read_bytes() == before


@pytest.mark.parametrize("extra, needle", [
    (["--at", "x"], "--at x"),
    (["--at", "99"], "--at 99"),
    (["--at", "1", "--order", "0"], "--order 0"),
    (["--at", "1", "--set", "model.width=8"], "model.width"),
    (["--at", "1", "--set", "seed=3"], "seed"),
    (["--at", "1", "--reexpand-every", "every"], "--reexpand-every"),
    (["--at", "1", "--reexpand-every", "doubling:inf"], "--reexpand-every"),
    (["--at", "1", "--set", "optim.momentum=0.9"], "optim.momentum"),
    (["--at", "1", "--set", "models=[full]"], "models"),
])
def test_cli_spawn_bad_input_is_one_line_and_exit_2(parent, tmp_path, extra, needle):
    result = run_cli("spawn", parent, *extra, "--out", tmp_path / "o")
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_spawn_from_a_folder_that_is_no_run(tmp_path):
    result = run_cli("spawn", tmp_path, "--at", "0")
    assert result.returncode == 2 and "not a run directory" in result.stderr


class SignalAtStep(Quiet):
    """Quiet progress that sends this process SIGTERM after a given step."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def step(self, step, latest):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_stopped_spawned_run_resumes_to_the_same_tables(parent, tmp_path):
    """A spawned run with children and re-expansion, stopped mid-way and resumed, writes the
    same metrics, children and kernel tables as one that ran through."""
    recipe = spawn_recipe(parent_recipe(parent), parent, 1, (1,), children=2,
                          reexpand_every=(3,), overrides=("eval.kernel_n=4",
                                                          "eval.kernel_block=2"))
    train(recipe, str(tmp_path / "a"), Quiet())
    with pytest.raises(Stopped):
        train(recipe, str(tmp_path / "b"), SignalAtStep(6))
    assert pd.read_csv(tmp_path / "b" / "metrics.csv")["step"].max() < 12
    train(recipe, str(tmp_path / "b"), Quiet())
    for table in ("metrics.csv", "children.csv", "kernels.csv", "layers.csv"):
        assert table_without_clock(tmp_path / "a" / table) == \
            table_without_clock(tmp_path / "b" / table), table


@pytest.mark.slow
def test_spawn_of_a_spawned_run_starts_from_its_own_trajectory(parent, tmp_path):
    """A spawned run without a checkpoint before the new spawn point is rebuilt from its own
    parent, not from the seed; epochs before its own spawn point are refused."""
    child = tmp_path / "at1"
    recipe = spawn_recipe(parent_recipe(parent), parent, 1, (1,),
                          overrides=("checkpoint.keep_epochs=[]", "checkpoint.keep=1",
                                     "optim.lr=0.03"))
    train(recipe, str(child), Quiet())
    assert [p.name for p in (child / "checkpoints").iterdir() if p.name.isdigit()] == ["12"]
    with pytest.raises(RecipeError, match="--at 0.5"):
        spawn_recipe(parent_recipe(child), child, 0.5, (1,))
    metrics, _ = spawned(child, tmp_path / "grand", 2, orders=(1,))
    ours = metrics[(metrics["model"] == "full") & (metrics["step"] == 8)].iloc[0]
    # The child trained at its own rate from step 4: the grandchild must start on that path.
    theirs = pd.read_csv(child / "metrics.csv").set_index(["model", "step"]).loc[("full", 8)]
    assert ours["test_loss"] == pytest.approx(theirs["test_loss"], rel=1e-5)
    other = pd.read_csv(parent / "metrics.csv").set_index(["model", "step"]).loc[("full", 8)]
    assert abs(other["test_loss"] - theirs["test_loss"]) > 1e-4  # the rate mattered
