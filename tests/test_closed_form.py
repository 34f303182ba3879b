"""The closed-form linearized dynamics against gradient descent, kernel regression and a diagonal kernel."""

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from taylorcli.analyses.closed_form import closed_form_outputs, closed_form_trajectory
from taylorcli.analyses.ntk import ntk
from taylorcli.models import MLP
from taylorcli.taylor import taylorize


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


@cache
def digits_problem():
    """16 training and 8 test digits (8x8), an NTK-parameterized MLP-2-32 and its θ0, in float64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data[:24].reshape(-1, 8, 8, 1) / 16.0
    model = MLP(depth=2, width=32, num_classes=10, parameterization="ntk")
    f = lambda p, x: model.apply({"params": p}, x)
    params0 = model.init(jax.random.key(0), jnp.asarray(x))["params"]
    return f, params0, x[:16], digits.target[:16], x[16:]


def gradient_descent(f, params0, x_train, y_onehot, x_test, lr, steps, record):
    """Outputs of the order-1 Taylorized model after each step in `record` of full-batch GD on MSE."""
    f1 = taylorize(f, params0, 1)
    loss = lambda p: 0.5 / len(x_train) * jnp.sum((f1(p, x_train) - y_onehot) ** 2)

    def step(p, _):
        p = jax.tree.map(lambda w, g: w - lr * g, p, jax.grad(loss)(p))
        return p, (f1(p, x_train), f1(p, x_test))

    _, (train, test) = jax.jit(lambda p: jax.lax.scan(step, p, None, length=steps))(params0)
    at = np.asarray(record) - 1
    return np.asarray(train)[at], np.asarray(test)[at]


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_matches_gradient_descent_of_linearized_model_to_first_order_in_lr():
    # Discrete steps differ from the flow by O(η·λmax/N) (here λmax/N ≈ 1.4), so the error must
    # be below 0.015·η and halve with η at the same flow time η·t.
    f, params0, x_train, labels, x_test = digits_problem()
    y = np.eye(10)[labels]
    errors = []
    for lr, steps in [(0.5, 400), (0.25, 800)]:
        record = [steps // 8, steps // 2, steps]
        gd_train, gd_test = gradient_descent(f, params0, x_train, y, x_test, lr, steps, record)
        cf_train, cf_test = closed_form_trajectory(f, params0, x_train, labels, x_test, lr, record, 10, block=8)
        assert cf_train.shape == (3, 16, 10) and cf_test.shape == (3, 8, 10)
        errors.append(max(rel_err(gd_train, cf_train), rel_err(gd_test, cf_test)))
        assert errors[-1] < 0.015 * lr
        # Not vacuous: the outputs travel far further than the discrepancy.
        assert rel_err(cf_train[-1], cf_train[0]) > 50 * errors[-1]
    assert 0.4 < errors[1] / errors[0] < 0.6


def test_time_zero_is_f0_and_infinite_time_is_kernel_regression():
    f, params0, x_train, labels, x_test = digits_problem()
    y = np.eye(10)[labels]
    theta = ntk(f, params0, x_train, outputs="full", block=8)
    theta_test = ntk(f, params0, x_test, x_train, outputs="full", block=8)
    f0_train, f0_test = np.asarray(f(params0, x_train)), np.asarray(f(params0, x_test))
    assert np.linalg.matrix_rank(theta) == 160
    train, test = closed_form_outputs(theta, theta_test, f0_train, f0_test, y, 0.5, [0, 1e7, np.inf])
    np.testing.assert_allclose(train[0], f0_train, rtol=1e-12)
    np.testing.assert_allclose(test[0], f0_test, rtol=1e-12)
    regression = f0_test + (theta_test @ np.linalg.solve(theta, (y - f0_train).ravel())).reshape(8, 10)
    for k in (1, 2):
        np.testing.assert_allclose(train[k], y, atol=1e-9)
        np.testing.assert_allclose(test[k], regression, rtol=1e-8, atol=1e-8)


def test_singular_kernel_duplicated_examples():
    # A duplicated example makes Θ rank-deficient by C; the closed form must stay finite, match GD,
    # and still fit the (consistent) labels at t = ∞.
    f, params0, x_train, labels, x_test = digits_problem()
    x_dup, labels_dup = np.concatenate([x_train, x_train[:1]]), np.concatenate([labels, labels[:1]])
    y = np.eye(10)[labels_dup]
    record = [100, 400]
    train, test = closed_form_trajectory(f, params0, x_dup, labels_dup, x_test, 0.25,
                                         record + [np.inf], 10, block=8)
    assert np.isfinite(train).all() and np.isfinite(test).all()
    gd_train, gd_test = gradient_descent(f, params0, x_dup, y, x_test, 0.25, 400, record)
    assert rel_err(gd_train, train[:2]) < 0.015 * 0.25
    assert rel_err(gd_test, test[:2]) < 0.015 * 0.25
    np.testing.assert_allclose(train[-1], y, atol=1e-6)


def test_diagonal_kernel_with_zero_eigenvalue_matches_scalar_solutions():
    # Independent decoupled modes: f' = −(η/N) λ (f − y) per output; λ = 0 freezes the training
    # output while a test output coupled to it moves linearly at rate η·t/N.
    lam = np.array([0.0, 1e-30, 0.5, 3.0])  # N = 2, C = 2
    theta = np.diag(lam)
    theta_test = np.array([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, -1.0]])  # M = 1
    f0_train, y = np.array([[0.3, -0.2], [0.1, 0.4]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    f0_test, lr, times = np.array([[0.5, -0.5]]), 0.1, np.array([0.0, 3.0, 50.0])
    train, test = closed_form_outputs(theta, theta_test, f0_train, f0_test, y, lr, times)
    r0 = (f0_train - y).ravel()
    for k, t in enumerate(times):
        a = lr * t / 2
        np.testing.assert_allclose(train[k].ravel(), y.ravel() + np.exp(-a * lam) * r0, rtol=1e-13)
        gain = np.array([a, a] + [(1 - np.exp(-a * l)) / l for l in lam[2:]])
        np.testing.assert_allclose(test[k].ravel(), f0_test.ravel() - theta_test @ (gain * r0),
                                   rtol=1e-13, atol=1e-15)


def test_labels_as_integers_or_one_hot_and_no_test_set():
    f, params0, x_train, labels, _ = digits_problem()
    a, none = closed_form_trajectory(f, params0, x_train[:4], labels[:4], None, 0.5, [10], 10, block=8)
    b, _ = closed_form_trajectory(f, params0, x_train[:4], np.eye(10)[labels[:4]], None, 0.5, [10], 10)
    assert none is None
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_rejects_inconsistent_shapes_and_negative_times():
    theta, f0, y = np.eye(4), np.zeros((2, 2)), np.eye(2)
    with pytest.raises(ValueError):
        closed_form_outputs(np.eye(3), None, f0, None, y, 0.1, [1])
    with pytest.raises(ValueError):
        closed_form_outputs(theta, None, f0, None, np.eye(3), 0.1, [1])
    with pytest.raises(ValueError):
        closed_form_outputs(theta, np.zeros((2, 3)), f0, np.zeros((1, 2)), y, 0.1, [1])
    with pytest.raises(ValueError):
        closed_form_outputs(theta, None, f0, None, y, 0.1, [-1])
