"""A run's extra analyses: kernel dynamics (eval.kernel_n) and the closed form (eval.closed_form)."""

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from taylorcli.data import standardize
from taylorcli.analyses.kernel_dynamics import kernel_subset
from taylorcli.run.progress import PlainProgress
from taylorcli.recipe import RecipeError
from taylorcli.analyses.training import train_recipe as train
from taylorcli.data import load_for_recipe as load_data, with_data_stats
from taylorcli.engine.setup import build_setup


def setup_of(recipe):
    """The recipe's setup on its loaded data (as a run builds it)."""
    ds = load_data(recipe)
    return build_setup(with_data_stats(recipe, ds), ds)

KERNELS = ("eval.kernel_n=6", "eval.kernel_block=4", "eval.kernel_outputs=full")
# Lee et al.'s setting, small: MSE, plain full-batch gradient descent, no augmentation.
LEE = ("train.loss=mse", "data.pad=0", "optim.grad_clip=null", "model.parameterization=ntk",
       "model.arch=mlp", "model.width=64", "data.train_limit=32", "train.batch_size=32",
       "optim.lr=0.05", "train.epochs=40", "eval.every_epochs=10", "eval.closed_form=true",
       "taylor.orders=[1]")


def quiet():
    return PlainProgress(stream=io.StringIO())


@pytest.mark.slow
def test_kernel_dynamics_of_a_run(tmp_path, tiny_recipe):
    recipe = tiny_recipe(*KERNELS)
    train(recipe, str(tmp_path / "run"), quiet())
    table = pd.read_csv(tmp_path / "run" / "kernels.csv")
    assert set(table["model"]) == {"full", "order1", "order2"}
    assert list(table.loc[table["model"] == "full", "step"]) == [0, 4, 8]
    # The linearized model's tangent kernel is constant; the network's and order 2's move.
    assert table.loc[table["model"] == "order1", "distance_from_start"].max() < 1e-6
    last = table[table["step"] == 8].set_index("model")
    assert last.loc["full", "distance_from_start"] > 1e-5
    assert last.loc["order2", "distance_from_start"] > 1e-7
    velocity = last.loc["full", "distance_from_previous"] / 1.0  # one epoch between evaluations
    assert last.loc["full", "velocity"] == pytest.approx(velocity)

    # The saved kernel at step 0 equals J Jᵀ from a Jacobian materialized here.
    setup = setup_of(recipe)
    ds, spec, engine = setup.data, setup.spec, setup.engine
    theta0 = setup.initial_state().theta0
    idx = kernel_subset(len(ds.train_y), 6, recipe.seed)
    x = standardize(jnp.asarray(ds.train_x[idx]), mean=ds.mean, std=ds.std)
    jac = jax.jacrev(engine.apply)(theta0, x)
    flat = np.concatenate([np.asarray(j).reshape(6 * spec.num_classes, -1)
                           for j in jax.tree.leaves(jac)], axis=1)
    with np.load(tmp_path / "run" / "kernels" / "step00000000.npz") as saved:
        np.testing.assert_allclose(saved["full"], flat @ flat.T, rtol=2e-4, atol=1e-4)
        np.testing.assert_allclose(saved["order1"], saved["full"], rtol=1e-5, atol=1e-5)
        k0 = {m: saved[m].astype(np.float64) for m in ("full", "order1", "order2")}

    # The relative change ‖K_t − K_0‖_F / ‖K_0‖_F, from the saved kernels by hand.
    with np.load(tmp_path / "run" / "kernels" / "step00000008.npz") as saved:
        for model, k0m in k0.items():
            kt = saved[model].astype(np.float64)
            want = math.sqrt(((kt - k0m) ** 2).sum()) / math.sqrt((k0m ** 2).sum())
            assert last.loc[model, "relative_change"] == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert last.loc["order1", "relative_change"] < 1e-5  # constant tangent kernel
    assert (table.loc[table["step"] == 0, "relative_change"] == 0).all()


def test_relative_change_sees_a_rescaled_kernel_that_the_distance_does_not():
    """Issue 21: a kernel shrunk by 16% is at distance 0 from its start, and 0.16 away in
    relative Frobenius norm."""
    from taylorcli.analyses.kernel_dynamics import relative_change
    from taylorcli.analyses.ntk import kernel_distance

    k = np.random.default_rng(0).normal(size=(5, 5))
    k = k @ k.T
    assert kernel_distance(k, 0.84 * k) == pytest.approx(0.0, abs=1e-12)
    assert relative_change(k, 0.84 * k) == pytest.approx(0.16, rel=1e-12)
    assert math.isnan(relative_change(np.zeros((2, 2)), np.eye(2)))


@pytest.mark.slow
def test_report_reads_kernels_written_before_the_relative_change(tmp_path, tiny_recipe):
    """An old run's kernels.csv, without relative_change, still gives its kernel figure."""
    out = tmp_path / "old"
    train(tiny_recipe(*KERNELS), str(out), quiet())
    table = pd.read_csv(out / "kernels.csv").drop(columns=["relative_change"])
    table.to_csv(out / "kernels.csv", index=False)
    from taylorcli.report.figures import kernel_figure
    from taylorcli.run.reading import load_run

    assert kernel_figure(load_run(out), out / "k.png").is_file()  # inside the run's folder


def closed_form_gap(tmp_path, tiny_recipe, lr, epochs):
    recipe = tiny_recipe(*LEE, f"optim.lr={lr}", f"train.epochs={epochs}",
                         f"eval.every_epochs={epochs // 4}")
    out = tmp_path / f"lee{lr}"
    train(recipe, str(out), quiet())
    table = pd.read_csv(out / "closed_form.csv")
    return table[table["model"] == "order1"].set_index("step")


@pytest.mark.slow
def test_closed_form_tracks_the_linearized_model(tmp_path, tiny_recipe):
    """Gradient descent of the order-1 model follows the closed-form gradient flow up to O(η)."""
    coarse = closed_form_gap(tmp_path, tiny_recipe, 0.04, 40)
    fine = closed_form_gap(tmp_path, tiny_recipe, 0.02, 80)
    assert list(coarse["flow_time"]) == pytest.approx([0, 0.4, 0.8, 1.2, 1.6])
    assert list(fine["flow_time"]) == pytest.approx(list(coarse["flow_time"]))
    assert coarse["relative_difference"].iloc[0] == 0
    assert coarse["relative_difference"].max() < 0.1
    # Halving the rate (same flow times) halves the gap: first order in η, as a discretization.
    ratio = (fine["relative_difference"].to_numpy()[1:]
             / coarse["relative_difference"].to_numpy()[1:])
    assert np.all((ratio > 0.35) & (ratio < 0.65)), ratio
    assert coarse["closed_form_train_loss"].is_monotonic_decreasing


def test_closed_form_flow_time_follows_the_schedule(tmp_path, tiny_recipe):
    recipe = tiny_recipe(*LEE, "optim.schedule=step", "optim.decay_epochs=[15]",
                         "optim.decay_factor=0.5", "train.epochs=20")
    train(recipe, str(tmp_path / "lee"), quiet())
    order1 = pd.read_csv(tmp_path / "lee" / "closed_form.csv")
    order1 = order1[order1["model"] == "order1"].set_index("step")
    assert order1.loc[20, "flow_time"] == pytest.approx(0.05 * 15 + 0.025 * 5)
    assert order1["relative_difference"].max() < 0.1


@pytest.mark.parametrize("bad, key", [
    ("train.loss=cross_entropy", "train.loss"),
    ("data.pad=2", "data.pad"),
    ("optim.grad_clip=5", "optim.grad_clip"),
    ("optim.momentum=0.9", "optim.momentum"),
])
def test_closed_form_refuses_settings_it_does_not_describe(tiny_recipe, bad, key):
    with pytest.raises(RecipeError, match=key):
        tiny_recipe(*LEE, bad)


@pytest.mark.slow
def test_report_draws_the_analyses(tmp_path, tiny_recipe):
    from taylorcli.report.paper_report import report

    train(tiny_recipe(*KERNELS, "eval.kernel_outputs=trace"), str(tmp_path / "runs" / "k"), quiet())
    made = report(tmp_path / "runs", "md", tmp_path / "out")
    figure = tmp_path / "out" / "figures" / "kernels_k.png"
    assert figure in made.files and figure.stat().st_size > 1000
    assert "figures/kernels_k.png" in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "figures" / "closed_form_k.png").exists()


def test_kernel_dynamics_takes_the_expansion_point_as_an_argument(tmp_path, tiny_recipe):
    """A new centre (a re-expansion, a spawn) reuses the compiled Jacobian and gives the kernel
    of the model expanded there, as a separate expansion computes it."""
    from taylorcli.analyses import ntk as ntk_module
    from taylorcli.analyses.kernel_dynamics import KernelDynamics
    from taylorcli.run.analysis import RunContext
    from taylorcli.run.directory import RunDir
    from taylorcli.taylor import taylorize

    recipe = tiny_recipe("eval.kernel_n=6", "eval.kernel_block=3")
    setup = setup_of(recipe)
    engine = setup.engine
    state = setup.initial_state()
    context = RunContext(setup, engine, None, RunDir(tmp_path), [0], lambda s: 0.1)
    kd = KernelDynamics(context)
    first = kd.kernels(state)
    compiled = ntk_module._jacobian._cache_size()
    rng = np.random.default_rng(0)
    moved = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(a.dtype),
                         state.theta0)
    params = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(a.dtype), moved)
    state = state.replace(theta0=moved, params={n: params for n in engine.names})
    second = kd.kernels(state)
    assert ntk_module._jacobian._cache_size() == compiled  # no program compiled for the centre
    for spec_ in engine.models:
        if spec_.order == 0:
            continue
        direct = ntk_module.ntk(taylorize(engine.apply, moved, spec_.order), params, kd.x,
                                block=kd.block)
        np.testing.assert_allclose(second[spec_.name], direct, rtol=2e-4, atol=1e-5)
        assert not np.allclose(second[spec_.name], first[spec_.name])
