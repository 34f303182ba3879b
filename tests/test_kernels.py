"""Empirical NTKs against a materialized Jacobian, and the kernel distance against closed forms."""

import math
from decimal import Decimal, getcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from taylorcli.analyses.ntk import kernel_distance, kernel_velocity, ntk
from taylorcli.models import CNN, MLP
from taylorcli.taylor import taylorize

getcontext().prec = 50
RTOL = 1e-10  # float64: blockwise and materialized kernels differ by rounding only


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def network(kind):
    """A small MLP (tanh) or CNN (relu), its float64 θ0, two input sets, and a displaced θ."""
    if kind == "mlp":
        model, shape = MLP(depth=2, width=8, num_classes=3, activation="tanh"), (5,)
    else:
        model, shape = CNN(depth=2, width=4, num_classes=3), (6, 6, 2)
    x1 = jax.random.normal(jax.random.key(1), (5, *shape), jnp.float64)
    x2 = jax.random.normal(jax.random.key(2), (3, *shape), jnp.float64)
    params0 = model.init(jax.random.key(0), x1)["params"]
    # Larger biases than the init's 1e-6, so their Jacobian columns matter too.
    params0 = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params0)
    leaves, tree = jax.tree.flatten(params0)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    apply = lambda p, x: model.apply({"params": p}, x)
    return apply, params0, params, x1, x2


def materialized(f, params, x):
    """(full, trace) Gram matrices of the whole (n·C, P) Jacobian of the batch x."""
    leaves = jax.tree.leaves(jax.jit(jax.jacrev(f))(params, x))
    n, c = leaves[0].shape[:2]
    jac = np.concatenate([np.asarray(j).reshape(n * c, -1) for j in leaves], axis=1)
    full = jac @ jac.T
    return full, np.einsum("icjc->ij", full.reshape(n, c, n, c))


def check_against_materialized(f, params, x1, x2, block):
    """ntk(x1), ntk(x1, x2), ntk(x2, x1), full and trace, equal blocks of one materialized Gram."""
    full, trace = materialized(f, params, jnp.concatenate([x1, x2]))
    n1, c = len(x1), full.shape[0] // len(trace)
    one, two = np.arange(n1), np.arange(n1, len(trace))
    for a, b, r, s in [(x1, None, one, one), (x1, x2, one, two), (x2, x1, two, one)]:
        np.testing.assert_allclose(ntk(f, params, a, b, block=block), trace[np.ix_(r, s)], rtol=RTOL)
        rows, cols = (np.ravel(i[:, None] * c + np.arange(c)) for i in (r, s))  # row i·C + c
        np.testing.assert_allclose(ntk(f, params, a, b, outputs="full", block=block),
                                   full[np.ix_(rows, cols)], rtol=RTOL)


# block 2: 5 and 3 examples, a ragged last block; block 16: one padded block
@pytest.mark.parametrize("kind, block", [("mlp", 2), ("mlp", 16), ("cnn", 16),
                                         pytest.param("cnn", 2, marks=pytest.mark.slow)])
def test_ntk_equals_materialized_jacobian(kind, block):
    f, _, params, x1, x2 = network(kind)
    check_against_materialized(f, params, x1, x2, block)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_ntk_of_order2_taylorized_model_away_from_expansion_point(kind):
    f, params0, params, x1, x2 = network(kind)
    f2 = taylorize(f, params0, 2)
    check_against_materialized(f2, params, x1, x2, block=2)
    # Not vacuous: the order-2 model's kernel moves away from θ0.
    assert kernel_distance(ntk(f2, params, x1, block=2), ntk(f2, params0, x1, block=2)) > 1e-4


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_order1_kernel_is_constant_and_equals_network_kernel_at_theta0(kind):
    f, params0, params, x1, _ = network(kind)
    f1 = taylorize(f, params0, 1)
    at_theta0 = ntk(f, params0, x1, outputs="full", block=2)
    np.testing.assert_allclose(ntk(f1, params0, x1, outputs="full", block=2), at_theta0, rtol=RTOL)
    np.testing.assert_allclose(ntk(f1, params, x1, outputs="full", block=2), at_theta0, rtol=RTOL)
    # The network's own kernel does move with θ, so constancy is the linearization's doing.
    assert kernel_distance(ntk(f, params, x1, outputs="full", block=2), at_theta0) > 1e-4


def test_ntk_shape_dtype_and_gram_properties():
    f, _, params, x1, x2 = network("mlp")
    with jax.enable_x64(False):
        p32 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        k = ntk(f, p32, np.asarray(x1, np.float32), outputs="full", block=2)
    assert k.shape == (15, 15) and k.dtype == np.float32
    np.testing.assert_array_equal(k, k.T)  # the symmetric case mirrors blocks exactly
    assert np.linalg.eigvalsh(k.astype(np.float64)).min() > -1e-4 * np.abs(k).max()
    assert ntk(f, params, x1, x2).shape == (5, 3)
    with pytest.raises(ValueError):
        ntk(f, params, x1, outputs="diagonal")
    with pytest.raises(ValueError):
        ntk(f, params, x1, block=0)


def test_kernel_distance_zero_for_equal_and_rescaled_kernels():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    k = a @ a.T
    assert kernel_distance(k, k) == pytest.approx(0.0, abs=1e-14)
    for c in (1e-6, 0.5, 3.0, 1e6):
        assert kernel_distance(k, c * k) == pytest.approx(0.0, abs=1e-14)


def test_kernel_distance_closed_forms():
    assert kernel_distance(np.diag([1.0, 0.0]), np.diag([0.0, 1.0])) == pytest.approx(1.0)  # orthogonal
    q = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))[0]
    assert kernel_distance(np.eye(4), q @ np.diag([1.0, -1.0, 1.0, -1.0]) @ q.T) == pytest.approx(1.0)
    # <I, 11ᵀ> = 2, |I| = √2, |11ᵀ| = 2.
    assert kernel_distance(np.eye(2), np.ones((2, 2))) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-14)
    assert kernel_distance(np.eye(3), -np.eye(3)) == pytest.approx(2.0)


def test_kernel_distance_symmetric_bounded_and_float64():
    rng = np.random.default_rng(2)
    for _ in range(20):
        k1, k2 = rng.normal(size=(2, 5, 5))
        s = kernel_distance(k1, k2)
        assert 0.0 <= s <= 2.0
        assert s == kernel_distance(k2, k1)
    # float32 inputs: the float64 sum resolves a difference far below float32's epsilon·size.
    k1 = np.ones((300, 300), np.float32)
    k2 = k1.copy()
    k2[0, 0] = 1 + 2 ** -10
    n, d = Decimal(90000), Decimal(2) ** -10
    expected = float(1 - (n + d) / (n * (n + 2 * d + d * d)).sqrt())  # ≈ 5e-12, 50 digits
    assert kernel_distance(k1, k2) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        kernel_distance(np.zeros((2, 2)), np.eye(2))
    with pytest.raises(ValueError):
        kernel_distance(np.eye(2), np.eye(3))


def test_kernel_velocity_is_distance_per_time():
    k1, k2 = np.eye(2), np.ones((2, 2))
    assert kernel_velocity(k1, k2, 0.25) == pytest.approx(4 * kernel_distance(k1, k2))
    with pytest.raises(ValueError):
        kernel_velocity(k1, k2, 0.0)
