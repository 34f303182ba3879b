"""Tests for taylorcli.metrics against hand numpy computations."""

import jax
import numpy as np
import pytest

from taylorcli.metrics import cos_func, cos_param, layer_movement, layer_paths, loss_and_accuracy
from taylorcli.models import CNN, abstract_params
from taylorcli.engine.optimizer import make_loss


def tree(rng, scale=1.0):
    """A small nested pytree of float32 arrays, like flax params."""
    return {
        "conv1": {"bias": rng.normal(size=3) * scale, "kernel": rng.normal(size=(3, 3, 1, 3)) * scale},
        "dense": {"bias": rng.normal(size=10) * scale, "kernel": rng.normal(size=(3, 10)) * scale},
    }


def f32(t):
    return jax.tree.map(lambda a: np.asarray(a, np.float32), t)


def flat(t):
    """Concatenate leaves in an order chosen here (sorted paths), independent of jax's flattening."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            for k in sorted(node):
                walk(node[k])
        else:
            out.append(np.asarray(node, np.float64).ravel())

    walk(t)
    return np.concatenate(out)


def add(t, u, c=1.0):
    return jax.tree.map(lambda a, b: a + c * b, t, u)


# ---------------------------------------------------------------------------
# cos_param


def test_cos_param_matches_numpy():
    rng = np.random.default_rng(0)
    p0, a, b = f32(tree(rng)), f32(tree(rng)), f32(tree(rng))
    da, db = flat(a) - flat(p0), flat(b) - flat(p0)
    expected = da @ db / (np.linalg.norm(da) * np.linalg.norm(db))
    assert abs(expected) > 0.01  # a non-trivial angle
    assert float(cos_param(a, b, p0)) == pytest.approx(expected, abs=1e-5)
    assert float(cos_param(b, a, p0)) == pytest.approx(expected, abs=1e-5)


def test_cos_param_is_about_displacements_not_positions():
    rng = np.random.default_rng(1)
    p0, d = f32(tree(rng, 10.0)), f32(tree(rng, 0.1))
    a = add(p0, d)
    # Large θ0 and a small shared displacement: positions are nearly parallel anyway, but an
    # orthogonal-ish second displacement must not look aligned.
    e = f32(tree(rng, 0.1))
    b = add(p0, e)
    expected = flat(d) @ flat(e) / (np.linalg.norm(flat(d)) * np.linalg.norm(flat(e)))
    assert float(cos_param(a, b, p0)) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("c", [0.01, 1.0, 37.0])
def test_cos_param_positive_scaling_invariance(c):
    rng = np.random.default_rng(2)
    p0, d, e = f32(tree(rng)), f32(tree(rng)), f32(tree(rng))
    base = float(cos_param(add(p0, d), add(p0, e), p0))
    assert float(cos_param(add(p0, d, c), add(p0, e), p0)) == pytest.approx(base, abs=1e-5)
    assert float(cos_param(add(p0, d), add(p0, e, c), p0)) == pytest.approx(base, abs=1e-5)
    assert float(cos_param(add(p0, d, -c), add(p0, e), p0)) == pytest.approx(-base, abs=1e-5)


def test_cos_param_identical_and_opposite():
    rng = np.random.default_rng(3)
    p0, d = f32(tree(rng)), f32(tree(rng, 0.5))
    assert float(cos_param(add(p0, d), add(p0, d), p0)) == pytest.approx(1.0, abs=1e-6)
    assert float(cos_param(add(p0, d), add(p0, d, 3.0), p0)) == pytest.approx(1.0, abs=1e-6)
    assert float(cos_param(add(p0, d), add(p0, d, -1.0), p0)) == pytest.approx(-1.0, abs=1e-6)


def test_cos_param_undefined_at_theta0():
    rng = np.random.default_rng(4)
    p0, d = f32(tree(rng)), f32(tree(rng))
    assert np.isnan(float(cos_param(p0, add(p0, d), p0)))


def test_metrics_do_not_overflow_for_large_finite_displacements():
    """A model close to blowing up (finite parameters ~1e20, not yet flagged as diverged) must
    still get true geometry: cos_param is scale-invariant and the layer distance is finite.

    Currently fails: cos_param and layer_movement square float32 entries, which overflows
    above ~1.8e19, so cos_param returns NaN (or 0.0) and distances return inf. Seen in a real
    run with optim.lr=1e6: order2 reported cos_param 0 and distance inf with diverged=False.
    """
    rng = np.random.default_rng(11)
    p0, d = f32(tree(rng)), f32(tree(rng, 1e20))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(add(p0, d)))
    assert float(cos_param(add(p0, d), add(p0, d, 0.5), p0)) == pytest.approx(1.0, abs=1e-5)
    dist, _ = layer_movement(add(p0, d), p0)
    expected = [np.linalg.norm(flat(d[layer])) for layer in ("conv1", "dense")]
    np.testing.assert_allclose(np.asarray(dist, np.float64), expected, rtol=1e-5)


# ---------------------------------------------------------------------------
# cos_func


def np_cos_func(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_cos_func_matches_numpy():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(50, 10)).astype(np.float32)
    b = (a + rng.normal(size=(50, 10))).astype(np.float32)
    assert cos_func(a, b) == pytest.approx(np_cos_func(a, b), abs=1e-6)
    assert 0.2 < cos_func(a, b) < 0.95


def test_cos_func_per_example_centring():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(40, 10))
    b = a + 0.5 * rng.normal(size=(40, 10))
    base = cos_func(a, b)
    shift = rng.normal(size=(40, 1)) * 100.0  # one constant per example, on every class
    assert cos_func(a + shift, b) == pytest.approx(base, abs=1e-9)
    assert cos_func(a, b - shift) == pytest.approx(base, abs=1e-9)
    # Uncentred cosine would be dominated by the shift: the centring is what keeps the value.
    raw = (a + shift).ravel() @ b.ravel() / (np.linalg.norm(a + shift) * np.linalg.norm(b))
    assert abs(raw - base) > 0.05
    # A per-class offset (the same for every example) is a real change of the function.
    per_class = rng.normal(size=(1, 10)) * 3.0
    assert abs(cos_func(a + per_class, b) - base) > 0.05


def test_cos_func_identical_scaled_opposite():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(20, 10))
    assert cos_func(a, a) == pytest.approx(1.0, abs=1e-12)
    assert cos_func(a, 4.0 * a + rng.normal(size=(20, 1))) == pytest.approx(1.0, abs=1e-12)
    assert cos_func(a, -a) == pytest.approx(-1.0, abs=1e-12)


# ---------------------------------------------------------------------------
# layer movement


def test_layer_paths_and_movement_on_cnn_params():
    # The real flax parameter tree of a CNN-2-4 (shapes only), filled with random numbers.
    shapes = abstract_params(CNN(depth=2, width=4, num_classes=10), (12, 12, 1))
    rng = np.random.default_rng(8)
    p0 = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    # A different amount of movement in each layer, and in kernel vs bias.
    scales = {"conv1": 0.01, "conv2": 0.3, "dense": 2.0}
    p = {layer: {name: np.asarray(v) + scales[layer] * (1 + (name == "bias"))
                 * rng.normal(size=v.shape).astype(np.float32)
                 for name, v in leaves.items()}
         for layer, leaves in p0.items()}

    assert layer_paths(p0) == ["conv1", "conv2", "dense"]
    dist, rel = layer_movement(p, p0)
    dist, rel = np.asarray(dist), np.asarray(rel)
    assert dist.shape == rel.shape == (3,)
    for i, layer in enumerate(["conv1", "conv2", "dense"]):
        moved = np.concatenate([(np.asarray(p[layer][k], np.float64)
                                 - np.asarray(p0[layer][k], np.float64)).ravel()
                                for k in ("kernel", "bias")])
        start = np.concatenate([np.asarray(p0[layer][k], np.float64).ravel() for k in ("kernel", "bias")])
        assert dist[i] == pytest.approx(np.linalg.norm(moved), rel=1e-5)
        assert rel[i] == pytest.approx(np.linalg.norm(moved) / np.linalg.norm(start), rel=1e-5)
    assert dist[0] < dist[1] < dist[2]


def test_layer_movement_groups_nested_modules_by_top_level_module_in_call_order():
    rng = np.random.default_rng(9)
    # Insertion order is call order (as flax's init returns it): head is called last.
    p0 = f32({"block1": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 2)), "bias": rng.normal(size=2)},
                         "shortcut": {"kernel": rng.normal(size=(3, 3, 2, 2)), "bias": rng.normal(size=2)}},
              "head": {"kernel": rng.normal(size=(2, 3)), "bias": rng.normal(size=3)}})
    assert layer_paths(p0) == ["block1", "head"]
    dist, rel = layer_movement(p0, p0)
    np.testing.assert_array_equal(np.asarray(dist), 0.0)
    np.testing.assert_array_equal(np.asarray(rel), 0.0)

    p = jax.tree.map(lambda a: a, p0)
    p["block1"]["shortcut"] = {"kernel": p0["block1"]["shortcut"]["kernel"] + 1.0,
                               "bias": p0["block1"]["shortcut"]["bias"]}
    dist, rel = layer_movement(p, p0)
    start = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2)
                        for module in p0["block1"].values() for v in module.values()))
    np.testing.assert_allclose(np.asarray(dist), [6.0, 0.0], atol=1e-6)  # sqrt(36 ones)
    np.testing.assert_allclose(np.asarray(rel), [6.0 / start, 0.0], rtol=1e-5)
    # An explicit order (as the engine gives it, from the model) is followed.
    dist, _ = layer_movement(p, p0, ["head", "block1"])
    np.testing.assert_allclose(np.asarray(dist), [0.0, 6.0], atol=1e-6)


# ---------------------------------------------------------------------------
# loss and accuracy


def test_loss_and_accuracy_match_numpy():
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(30, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, 30).astype(np.int32)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ce = -log_p[np.arange(30), labels].mean()
    acc = (logits.argmax(axis=1) == labels).mean()
    loss, accuracy = loss_and_accuracy(logits, labels, make_loss("cross_entropy", 10))
    assert loss == pytest.approx(ce, rel=1e-5)
    assert accuracy == pytest.approx(acc)
    mse = 0.5 * ((logits - np.eye(10)[labels]) ** 2).sum(axis=1).mean()
    loss, _ = loss_and_accuracy(logits, labels, make_loss("mse", 10))
    assert loss == pytest.approx(mse, rel=1e-5)
