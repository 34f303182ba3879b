"""Engine semantics: the lockstep step against a hand-written SGD, evaluation, determinism,
divergence, evaluation points and the learning-rate schedule."""

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from conftest import table_without_clock
from taylorcli import data as data_lib
from taylorcli.analyses.training import train_recipe as train
from taylorcli.data import load_for_recipe as load_data, with_data_stats
from taylorcli.engine.evaluation import Evaluator
from taylorcli.engine.lockstep import epoch_permutation, make_train_step, rng_streams
from taylorcli.engine.setup import build_setup
from taylorcli.models import build_network, init_params
from taylorcli.run.progress import PlainProgress
from taylorcli.run.schedule import evaluation_steps

# ---------------------------------------------------------------------------
# Independent reference: the models, the loss and the optimizer written out by hand.



def lockstep(recipe):
    """Data, spec, engine, initial state, jitted step and on-device training set of a recipe."""
    ds = load_data(recipe)
    setup = build_setup(with_data_stats(recipe, ds), ds)
    engine = setup.engine
    state = setup.initial_state()
    step_fn = jax.jit(make_train_step(engine, recipe.seed))
    return ds, setup.spec, engine, state, step_fn, jnp.asarray(ds.train_x), \
        jnp.asarray(ds.train_y)

def ce_loss(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def hand_models(f, theta0):
    """full, order1, order2 from their definitions along the segment θ0 + t (θ − θ0), t = 1.

    h(t) = f(θ0 + t Δ, x);  f_k(θ) = Σ_{j ≤ k} h^{(j)}(0) / j!.
    """

    def along(p, x):
        delta = jax.tree.map(jnp.subtract, p, theta0)
        return lambda t: f(jax.tree.map(lambda a, d: a + t * d, theta0, delta), x)

    def order1(p, x):
        h = along(p, x)
        h0, h1 = jax.jvp(h, (0.0,), (1.0,))
        return h0 + h1

    def order2(p, x):
        h = along(p, x)
        dh = lambda t: jax.jvp(h, (t,), (1.0,))[1]
        h0, h1 = jax.jvp(h, (0.0,), (1.0,))
        _, h2 = jax.jvp(dh, (0.0,), (1.0,))
        return h0 + h1 + h2 / 2

    return {"full": f, "order1": order1, "order2": order2}


def standardized_test_x(ds):
    """Test images scaled to [0, 1] and standardized per channel, written out here."""
    x = ds.test_x.astype(np.float32) / 255.0
    return (x - np.asarray(ds.mean, np.float32)) / np.asarray(ds.std, np.float32)


def global_norm(tree):
    return math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in jax.tree.leaves(tree)))


CLIP = 0.16  # between the smallest and largest gradient norms of the run below


def test_lockstep_steps_match_hand_sgd(tiny_recipe):
    """Several lockstep steps (crossing an epoch and an lr decay) equal hand-written SGD per model."""
    recipe = tiny_recipe(
        "data.train_limit=64", "data.flip=true", "train.epochs=2",  # 2 steps per epoch
        "optim.lr=0.5", "optim.momentum=0.9", "optim.weight_decay=0.01", f"optim.grad_clip={CLIP}",
        "optim.schedule=step", "optim.decay_epochs=[1]", "optim.decay_factor=0.2")
    ds, spec, engine, state, step_fn, train_x, train_y = lockstep(recipe)
    assert engine.steps_per_epoch == 2

    # θ0 is the recipe's initialization (its init key through the network's init, compiled as
    # one program), shared by every model.
    model = build_network(recipe.model, spec.num_classes)
    theta0 = jax.jit(model.init, static_argnums=1)(rng_streams(recipe.seed)["init"],
                                                   tuple(spec.image_shape))
    for name in ("full", "order1", "order2"):
        for a, b in zip(jax.tree.leaves(state.params[name]), jax.tree.leaves(theta0)):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state.theta0), jax.tree.leaves(theta0)):
        np.testing.assert_array_equal(a, b)

    f = model.apply
    fns = hand_models(f, theta0)
    grad_fns = {n: jax.jit(jax.value_and_grad(lambda p, x, y, fn=fn: ce_loss(fn(p, x), y)))
                for n, fn in fns.items()}
    predict = {n: jax.jit(fn) for n, fn in fns.items()}
    aug_key = rng_streams(recipe.seed)["augment"]

    params = {n: jax.tree.map(lambda a: np.asarray(a, np.float64), theta0) for n in fns}
    momentum = {n: jax.tree.map(np.zeros_like, params[n]) for n in fns}
    clipped = []
    for t in range(4):
        epoch, i = divmod(t, 2)
        perm = epoch_permutation(recipe.seed, epoch, len(ds.train_y))
        idx = np.asarray(perm)[i * 32:(i + 1) * 32]
        x = data_lib.augment(jax.random.fold_in(aug_key, t), ds.train_x[idx], pad=2, flip=True,
                             mean=ds.mean, std=ds.std)
        y = jnp.asarray(ds.train_y[idx])
        lr = 0.5 * (0.2 if t >= 2 else 1.0)  # decay at epoch 1 = step 2

        state, stats = step_fn(state, perm, train_x, train_y)
        assert int(state.step) == t + 1
        for n in fns:
            p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params[n])
            loss, g = grad_fns[n](p32, x, y)
            correct = int(jnp.sum(jnp.argmax(predict[n](p32, x), -1) == y))
            np.testing.assert_allclose(stats[n][0], loss, rtol=1e-5, err_msg=f"{n} loss, step {t}")
            assert int(stats[n][1]) == correct, (n, t)

            g = jax.tree.map(lambda a: np.asarray(a, np.float64), g)
            norm = global_norm(g)
            clipped.append(norm > CLIP)
            g = jax.tree.map(lambda a: a * min(1.0, CLIP / norm), g)
            g = jax.tree.map(lambda a, p: a + 0.01 * p, g, params[n])
            momentum[n] = jax.tree.map(lambda a, m: a + 0.9 * m, g, momentum[n])
            params[n] = jax.tree.map(lambda p, m: p - lr * m, params[n], momentum[n])

            for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(state.params[n])[0],
                                         jax.tree.leaves(params[n])):
                np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6,
                                           err_msg=f"{n} {jax.tree_util.keystr(path)} after step {t + 1}")
            assert not bool(state.diverged[n])
    assert any(clipped) and not all(clipped)  # both branches of clipping were exercised
    # The three models really did move apart (otherwise the comparison above proves little).
    d1 = global_norm(jax.tree.map(np.subtract, params["full"], params["order1"]))
    assert d1 > 1e-4


def test_epoch_permutation_reshuffles_each_epoch():
    perms = [np.asarray(epoch_permutation(0, e, 100)) for e in range(3)]
    for p in perms:
        assert sorted(p) == list(range(100))
    assert not np.array_equal(perms[0], perms[1]) and not np.array_equal(perms[1], perms[2])
    np.testing.assert_array_equal(perms[1], np.asarray(epoch_permutation(0, 1, 100)))
    assert not np.array_equal(perms[0], np.asarray(epoch_permutation(1, 0, 100)))


def test_rng_streams_are_distinct():
    keys = rng_streams(0)
    assert sorted(keys) == ["augment", "init", "shuffle"]
    data = [np.asarray(jax.random.key_data(k)) for k in keys.values()]
    assert len({d.tobytes() for d in data}) == 3


def test_step0_evaluation_identical_for_all_orders(tiny_recipe):
    """At θ0 every Taylorized model is the network: identical test logits, accuracy, loss."""
    recipe = tiny_recipe("data.test_limit=50", "eval.batch_size=24")  # 50 = 24 + 24 + 2: padding
    ds, spec, engine, state, _, _, _ = lockstep(recipe)
    evaluator = Evaluator(engine, ds, recipe.eval.batch_size, state)
    rows, layer_rows, logits = evaluator(state, 0, 0.0, 0.1)

    model = build_network(recipe.model, spec.num_classes)
    theta0 = init_params(model, rng_streams(recipe.seed)["init"], spec.image_shape)
    x = standardized_test_x(ds)
    expected = np.asarray(model.apply(theta0, x))
    assert expected.shape == (50, 10)
    for name in ("full", "order1", "order2"):
        assert logits[name].shape == (50, 10)
        np.testing.assert_allclose(logits[name], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(logits[name], logits["full"])
    acc = float(np.mean(expected.argmax(1) == ds.test_y))
    assert [r["model"] for r in rows] == ["full", "order1", "order2"]
    for r in rows:
        assert r["test_acc"] == pytest.approx(acc)
        assert r["test_loss"] == rows[0]["test_loss"]
        assert r["cos_func"] == pytest.approx(1.0)
        assert r["diverged"] is False and r["step"] == 0 and r["epoch"] == 0
    assert len(layer_rows) == 3 * 3
    assert all(r["distance"] == 0 and r["relative_distance"] == 0 for r in layer_rows)


# ---------------------------------------------------------------------------
# Whole runs through trainer.train.


def run(recipe, out):
    log = io.StringIO()
    result = train(recipe, str(out), PlainProgress(stream=log), resume=False)
    return result, log.getvalue()


SCHEDULE = ("data.train_limit=64", "taylor.orders=[1]", "train.epochs=3", "optim.schedule=step",
            "optim.decay_epochs=[1, 2]", "optim.decay_factor=0.5", "eval.steps=[1, 3]")


@pytest.fixture(scope="module")
def schedule_runs(tmp_path_factory, tiny_recipe):
    """The same small recipe run twice with seed 0 and once with seed 1."""
    root = tmp_path_factory.mktemp("runs")
    return {name: run(tiny_recipe(*SCHEDULE, *o), root / name)[0].run_dir.path
            for name, o in [("a", ()), ("b", ()), ("seed1", ("seed=1",))]}


def test_same_recipe_same_results(schedule_runs):
    a, b = schedule_runs["a"], schedule_runs["b"]
    for f in ("metrics.csv", "layers.csv"):
        assert table_without_clock(a / f) == table_without_clock(b / f), f
    assert (a / "recipe.yaml").read_bytes() == (b / "recipe.yaml").read_bytes()
    files = sorted(p.name for p in (a / "logits").iterdir())
    assert files and files == sorted(p.name for p in (b / "logits").iterdir())
    for name in files:
        la, lb = np.load(a / "logits" / name), np.load(b / "logits" / name)
        assert sorted(la.files) == sorted(lb.files)
        for k in la.files:
            np.testing.assert_array_equal(la[k], lb[k])


def test_run_equals_manual_step_loop(schedule_runs, tiny_recipe):
    """The training loop feeds the step the right permutation each epoch, for the right number of
    steps: its final logits equal those of a loop written here."""
    recipe = tiny_recipe(*SCHEDULE)
    ds, spec, engine, state, step_fn, train_x, train_y = lockstep(recipe)
    for t in range(3 * 2):
        state, _ = step_fn(state, epoch_permutation(recipe.seed, t // 2, 64), train_x, train_y)
    x = standardized_test_x(ds)
    model = build_network(recipe.model, spec.num_classes)
    f = model.apply
    fns = hand_models(f, state.theta0)
    with np.load(schedule_runs["a"] / "logits" / "step00000006.npz") as saved:
        for name in ("full", "order1"):
            np.testing.assert_allclose(saved[name], fns[name](state.params[name], x), rtol=1e-4, atol=1e-5)


def test_different_seed_different_results(schedule_runs):
    a = pd.read_csv(schedule_runs["a"] / "metrics.csv")
    c = pd.read_csv(schedule_runs["seed1"] / "metrics.csv")
    assert list(a["step"]) == list(c["step"])
    assert not np.allclose(a["test_loss"], c["test_loss"])
    assert not np.allclose(a["train_loss"].iloc[2:], c["train_loss"].iloc[2:])


def test_evaluation_points_and_step_decay_in_metrics(schedule_runs):
    m = pd.read_csv(schedule_runs["a"] / "metrics.csv")
    # 64 examples / batch 32 = 2 steps per epoch, 3 epochs; every epoch plus steps 1 and 3.
    points = [0, 1, 2, 3, 4, 6]
    for name in ("full", "order1"):
        rows = m[m["model"] == name]
        assert list(rows["step"]) == points
        np.testing.assert_allclose(rows["epoch"], [s / 2 for s in points])
        # The rate in effect from that step on: 0.1, halved at epoch 1 (step 2) and epoch 2 (step 4).
        np.testing.assert_allclose(rows["lr"], [0.1 * 0.5 ** sum(s >= b for b in (2, 4)) for s in points],
                                   rtol=1e-6)
        # Mean minibatch accuracy since the previous point: whole examples over whole batches.
        gaps = np.diff(points)
        correct = rows["train_acc"].iloc[1:].to_numpy() * 32 * gaps
        np.testing.assert_allclose(correct, np.round(correct), atol=1e-4)
        assert rows["train_loss"].iloc[1:].notna().all()
    assert len(m) == 2 * len(points)


@pytest.mark.parametrize("epochs, every, steps, spe, expected", [
    (3, 1, (), 4, [0, 4, 8, 12]),
    (5, 2, (), 3, [0, 6, 12, 15]),  # the final step is evaluated even off the every_epochs grid
    (2, 1, (1, 2, 4, 100), 4, [0, 1, 2, 4, 8]),  # extra steps merged, beyond-the-end dropped
    (4, 10, (3,), 2, [0, 3, 8]),
])
def test_evaluation_steps(tiny_recipe, epochs, every, steps, spe, expected):
    recipe = tiny_recipe(f"train.epochs={epochs}", f"eval.every_epochs={every}",
                         f"eval.steps={list(steps)}")
    assert evaluation_steps(recipe, spe) == expected


DIVERGE = ("data.train_limit=64", "optim.lr=1e6", "optim.grad_clip=null", "train.epochs=6",
           "optim.schedule=step", "optim.decay_epochs=[5]")


def int_leaves(tree):
    """Integer leaves of an optimizer state: optax's step counts (the schedule's among them)."""
    return [np.asarray(x) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer)]


def test_divergence_freezes_exactly_that_model(tiny_recipe):
    """lr=1e6 without clipping: a model that blows up is frozen at its last finite state, for good,
    while the models that stay finite keep being updated; the flag is sticky."""
    recipe = tiny_recipe(*DIVERGE)
    ds, spec, engine, state, step_fn, train_x, train_y = lockstep(recipe)
    assert int_leaves(state.opt["full"]), "expected a step count in the scheduled optimizer state"
    # order1 is flagged by hand before it ever blows up: the flag alone must freeze it, for good.
    state.diverged["order1"] = jnp.array(True)
    theta0 = jax.device_get(state.theta0)

    names = ("full", "order1", "order2")
    flagged_at = {}
    for t in range(12):
        perm = epoch_permutation(recipe.seed, t // 2, len(ds.train_y))
        before = jax.device_get(state)
        state, stats = step_fn(state, perm, train_x, train_y)
        after = jax.device_get(state)
        for n in names:
            was, now = bool(before.diverged[n]), bool(after.diverged[n])
            assert not (was and not now), f"{n}: diverged flag cleared at step {t + 1}"
            same_params = all(np.array_equal(a, b) for a, b in zip(
                jax.tree.leaves(before.params[n]), jax.tree.leaves(after.params[n])))
            counts_before, counts_after = int_leaves(before.opt[n]), int_leaves(after.opt[n])
            if now:
                flagged_at.setdefault(n, t + 1)
                # Frozen where it was: parameters and optimizer state untouched, still finite.
                assert same_params, f"{n} moved at step {t + 1} although diverged"
                assert all(np.array_equal(a, b) for a, b in zip(counts_before, counts_after))
                assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(after.params[n]))
            else:
                # Still training: finite loss, an optimizer update happened.
                assert np.isfinite(float(stats[n][0])), f"{n}: non-finite loss but not flagged"
                assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(after.params[n]))
                assert all(int(b) == int(a) + 1 for a, b in zip(counts_before, counts_after)), n
    assert flagged_at.get("order1") == 1
    for a, b in zip(jax.tree.leaves(state.params["order1"]), jax.tree.leaves(theta0)):
        np.testing.assert_array_equal(a, b)
    assert set(flagged_at) - {"order1"}, "lr=1e6 without clipping was expected to blow up a model"


def test_divergence_flags_in_metrics(tiny_recipe, tmp_path):
    """metrics.csv: once a model is flagged it stays flagged, and its results stop changing."""
    result, _ = run(tiny_recipe(*DIVERGE), tmp_path / "run")
    out = result.run_dir.path
    m = pd.read_csv(out / "metrics.csv")
    layers = pd.read_csv(out / "layers.csv")
    steps = sorted(m["step"].unique())
    assert steps == [0, 2, 4, 6, 8, 10, 12]
    logits = {s: np.load(out / "logits" / f"step{s:08d}.npz") for s in steps}

    any_diverged = False
    for name in ("full", "order1", "order2"):
        rows = m[m["model"] == name].sort_values("step")
        flags = rows["diverged"].astype(bool).tolist()
        assert flags == sorted(flags), f"{name}: diverged flag went back to False: {flags}"
        assert not flags[0]
        # A model not flagged had only finite minibatch losses since the previous point.
        assert np.isfinite(rows["train_loss"].to_numpy()[1:][~np.array(flags[1:])]).all(), name
        if flags[-1]:
            any_diverged = True
            first = flags.index(True)
            dist = [layers[(layers["model"] == name) & (layers["epoch"] == s / 2)]["distance"].to_numpy()
                    for s in steps]
            for k in range(first + 1, len(steps)):
                np.testing.assert_array_equal(dist[k], dist[first], err_msg=f"{name} moved after diverging")
                np.testing.assert_array_equal(logits[steps[k]][name], logits[steps[first]][name])
    assert any_diverged, "lr=1e6 without clipping was expected to blow up at least one model"


# ---------------------------------------------------------------------------
# The authors' data pipeline: one crop offset per batch, the last partial batch kept


def test_steps_per_epoch_drop_and_keep_the_last_partial_batch(tiny_recipe):
    from taylorcli.engine.lockstep import steps_per_epoch

    cifar = tiny_recipe("train.batch_size=256")
    assert steps_per_epoch(cifar, 50_000) == 195
    keep = tiny_recipe("train.batch_size=256", "train.last_batch=keep")
    assert steps_per_epoch(keep, 50_000) == 196  # the authors' 196 steps per epoch
    assert steps_per_epoch(keep, 51_200) == 200  # nothing left over: nothing to keep


def _offset(original, cropped, pad):
    """The (row, column) offset at which `cropped` was cut out of the zero-padded `original`."""
    h, w = original.shape[:2]
    padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
    found = [(a, b) for a in range(2 * pad + 1) for b in range(2 * pad + 1)
             if np.array_equal(padded[a:a + h, b:b + w], cropped)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("crop", ["per_image", "per_batch"])
def test_crop_offsets_per_image_or_one_per_batch(crop):
    rng = np.random.default_rng(3)
    images = rng.integers(1, 256, (16, 8, 8, 1), dtype=np.uint8)  # no zeros: offsets are unique
    x = data_lib.augment(jax.random.key(5), images, pad=2, flip=False, mean=(0.0,), std=(1.0,),
                         crop=crop)
    back = np.rint(np.asarray(x) * 255).astype(np.uint8)
    offsets = {_offset(images[i], back[i], 2) for i in range(len(images))}
    assert (len(offsets) == 1) == (crop == "per_batch"), offsets


def test_the_last_partial_batch_trains_on_its_own_examples(tiny_recipe):
    """72 examples at batch 32: steps of 32, 32 and 8; the 8-example step is SGD on their mean loss."""
    recipe = tiny_recipe("data.train_limit=72", "train.last_batch=keep", "data.crop=per_batch",
                         "optim.lr=0.5", "optim.grad_clip=null", "taylor.orders=[]")
    ds, spec, engine, state, step_fn, train_x, train_y = lockstep(recipe)
    assert engine.steps_per_epoch == 3
    model = build_network(recipe.model, spec.num_classes)
    f = model.apply
    aug_key = rng_streams(recipe.seed)["augment"]
    perm = epoch_permutation(recipe.seed, 0, len(ds.train_y))
    accuracies = []
    for t in range(3):
        before = state.params["full"]
        state, stats = step_fn(state, perm, train_x, train_y)
        # The same augmentation draw, then only the examples of this step.
        padded = np.concatenate([np.asarray(perm), np.asarray(perm)[:24]])
        idx = padded[t * 32:(t + 1) * 32]
        x = data_lib.augment(jax.random.fold_in(aug_key, t), ds.train_x[idx], pad=2, flip=False,
                             mean=ds.mean, std=ds.std, crop="per_batch")
        real = 32 if t < 2 else 8
        loss, g = jax.value_and_grad(lambda p: ce_loss(f(p, x[:real]), ds.train_y[idx[:real]]))(before)
        np.testing.assert_allclose(stats["full"][0], loss, rtol=1e-5)
        hits = np.argmax(np.asarray(f(before, x[:real])), -1) == ds.train_y[idx[:real]]
        assert int(stats["full"][1]) == int(hits.sum())
        accuracies.append(hits.mean())
        for got, b, gg in zip(jax.tree.leaves(state.params["full"]), jax.tree.leaves(before),
                              jax.tree.leaves(g)):
            np.testing.assert_allclose(got, np.asarray(b) - 0.5 * np.asarray(gg), rtol=1e-4,
                                       atol=1e-6)
    assert int(state.step) == 3
    # train_acc at the next evaluation: the mean of the three minibatch accuracies (8 of them
    # in the last), not correct answers over 3 full batches
    acc = float(state.stats["full"][1] / state.stats["full"][2])
    assert acc == pytest.approx(np.mean(accuracies), rel=1e-6)
