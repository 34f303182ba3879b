"""taylorize (Taylor mode) against independent computations: nested JVPs, closed forms, finite t."""

import math

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax.experimental import jet

from taylorcli import taylorize, taylorize_nested
from taylorcli.models import CNN, MLP, WideResNet


@pytest.fixture(autouse=True)
def float64():
    # Differences between two exact constructions must be rounding only; float64 makes that visible.
    with jax.enable_x64(True):
        yield


def perturbed(params, scale, seed=1):
    """θ0 + a random displacement of relative size `scale` per leaf."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = [p + scale * (jnp.std(p) + 1e-3) * jax.random.normal(k, p.shape, p.dtype)
           for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, out)


def rel_diff(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def network(kind, activation):
    """A small network of each family, its float64 θ0, an input batch and a displaced θ."""
    if kind == "dense":
        model, shape = MLP(depth=3, width=6, num_classes=3, activation=activation), (2, 5)
    elif kind == "conv":
        model, shape = CNN(depth=3, width=4, num_classes=3, activation=activation), (2, 8, 8, 2)
    else:
        model = WideResNet(depth=10, widen=1, width=3, num_classes=3, activation=activation)
        shape = (2, 8, 8, 2)
    x = jax.random.normal(jax.random.key(7), shape, jnp.float64)
    params0 = model.init(jax.random.key(0), x)["params"]
    params0 = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params0)
    apply = lambda p, x: model.apply({"params": p}, x)
    return apply, params0, x, perturbed(params0, 0.5)


@pytest.mark.slow
def test_gelu_and_softplus_equal_nested():
    # gelu: tanh, integer_pow and products of series; softplus: a custom_jvp (logaddexp).
    for act in ["gelu", "softplus"]:
        apply, params0, x, params = network("dense", act)
        for order in (2, 4):
            fast = taylorize(apply, params0, order)(params, x)
            ref = taylorize_nested(apply, params0, order)(params, x)
            assert rel_diff(fast, ref) < 1e-10, (act, order)


def test_jet_fails_on_relu_but_taylorize_does_not():
    # The reason taylorize has its own ReLU rule: jet cannot see through relu's custom JVP.
    with pytest.raises(Exception):
        jet.jet(jax.nn.relu, (jnp.ones(3),), ((jnp.ones(3), jnp.ones(3)),))
    f = lambda p, x: jnp.sum(jax.nn.relu(x * p["w"]) ** 2)
    p0, p = {"w": jnp.array([1.0, -1.0, 0.5])}, {"w": jnp.array([0.7, -0.2, 2.0])}
    x = jnp.array([1.0, 2.0, -3.0])
    for order in (1, 2, 3):
        assert jnp.allclose(taylorize(f, p0, order)(p, x), taylorize_nested(f, p0, order)(p, x))


def test_relu_at_an_exact_tie_follows_its_custom_jvp():
    # Zero pre-activations at θ0 (zero-padded image borders, zero bias) are common; relu's JVP
    # there is 0, and nested JVPs say so too.
    def f(p, x):
        h = lax.conv_general_dilated(x, p["w"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
        return jnp.sum(jax.nn.relu(h) * p["v"])

    x = jnp.pad(jax.random.normal(jax.random.key(0), (1, 4, 4, 1)), [(0, 0), (3, 3), (3, 3), (0, 0)])
    p0 = {"w": jax.random.normal(jax.random.key(1), (3, 3, 1, 2)), "b": jnp.zeros(2),
          "v": jnp.ones((1, 10, 10, 2))}
    p = perturbed(p0, 1.0)
    for order in (1, 2, 3):
        assert rel_diff(taylorize(f, p0, order)(p, x), taylorize_nested(f, p0, order)(p, x)) < 1e-12


def test_expansion_point_is_exact():
    apply, params0, x, _ = network("conv", "relu")
    for order in (1, 3):
        assert jnp.allclose(taylorize(apply, params0, order)(params0, x), apply(params0, x),
                            rtol=1e-12, atol=1e-12)


def test_deep_linear_network_equals_its_order_L_expansion():
    # f is a polynomial of degree L in θ: f_L = f exactly, f_{L-1} does not.
    L = 4
    ws0 = [jax.random.normal(jax.random.key(i), (3, 3)) for i in range(L)]
    f = lambda ws, x: x @ ws[0] @ ws[1] @ ws[2] @ ws[3]
    ws = perturbed(ws0, 0.8)
    x = jnp.eye(3)
    assert rel_diff(taylorize(f, ws0, L)(ws, x), f(ws, x)) < 1e-12
    assert rel_diff(taylorize(f, ws0, L - 1)(ws, x), f(ws, x)) > 1e-3


def test_closed_form_of_exp():
    # f(θ; x) = exp(θ x): f_k = exp(θ0 x) Σ_{j≤k} ((θ − θ0) x)^j / j!.
    f = lambda p, x: jnp.exp(p * x)
    x = jnp.linspace(-1.0, 2.0, 5)
    th0, th = 0.3, 1.1
    for k in range(1, 6):
        closed = jnp.exp(th0 * x) * sum(((th - th0) * x) ** j / math.factorial(j) for j in range(k + 1))
        assert rel_diff(taylorize(f, jnp.float64(th0), k)(jnp.float64(th), x), closed) < 1e-13


def test_error_shrinks_like_t_to_the_k_plus_1():
    # Finite displacements: |f(θ0 + tΔ) − f_k(θ0 + tΔ)| = O(t^{k+1}), so halving t divides it by 2^{k+1}.
    apply, params0, x, params = network("dense", "tanh")
    delta = jax.tree.map(jnp.subtract, params, params0)
    for k in (1, 2, 3):
        fk = taylorize(apply, params0, k)
        errs = []
        for t in (0.02, 0.01):
            p = jax.tree.map(lambda a, d: a + t * d, params0, delta)
            errs.append(float(jnp.max(jnp.abs(fk(p, x) - apply(p, x)))))
        assert errs[0] / errs[1] == pytest.approx(2 ** (k + 1), rel=0.15), (k, errs)


def test_derivatives_at_theta0_agree_up_to_order_k():
    # D^j f_k(θ0)[v,…,v] = D^j f(θ0)[v,…,v] for j ≤ k, and D^{k+1} f_k = 0 (f_k is a polynomial).
    apply, params0, x, params = network("conv", "tanh")
    v = jax.tree.map(jnp.subtract, perturbed(params0, 1.0, seed=5), params0)

    def directional(fn, j):
        g = lambda p: fn(p, x)
        for _ in range(j):
            g = (lambda h: lambda p: jax.jvp(h, (p,), (v,))[1])(g)
        return g(params0)

    k = 2
    fk = taylorize(apply, params0, k)
    for j in range(1, k + 1):
        assert rel_diff(directional(fk, j), directional(apply, j)) < 1e-9
    assert float(jnp.max(jnp.abs(directional(fk, k + 1)))) < 1e-9


def test_general_path_control_flow_pooling_and_custom_jvp():
    # Primitives the fast path does not know: max pooling, reduce_max, softmax, a fori_loop.
    def f(p, x):
        h = jnp.tanh(x @ p["a"])
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2), (1, 2), "VALID")
        h = lax.fori_loop(0, 3, lambda i, z: jnp.sin(z) * p["c"], h)
        return jax.nn.softmax(h, axis=-1) + jnp.max(h, axis=-1, keepdims=True)

    p0 = {"a": jax.random.normal(jax.random.key(0), (3, 6)), "c": jnp.float64(0.9)}
    p = perturbed(p0, 0.3)
    x = jax.random.normal(jax.random.key(2), (4, 3))
    for order in (1, 2, 3):
        assert rel_diff(taylorize(f, p0, order)(p, x), taylorize_nested(f, p0, order)(p, x)) < 1e-10


def test_pytree_outputs_and_bad_order():
    f = lambda p, x: {"y": p * x, "z": (jnp.sin(p * x),)}
    out = taylorize(f, jnp.float64(0.5), 2)(jnp.float64(0.7), jnp.ones(2))
    assert set(out) == {"y", "z"} and out["z"][0].shape == (2,)
    with pytest.raises(ValueError):
        taylorize(f, 0.5, -1)


def test_pow_with_a_constant_exponent_at_nonpositive_bases():
    # jet's pow rule goes through log(x); x ** 2.0 and RMS-norm-like code must still be exact.
    f = lambda p, x: p["w"] ** 2.0 + jnp.mean((x * p["w"]) ** 3.0) + jnp.abs(p["w"]) ** 0.5
    p0, p = {"w": jnp.array([-1.0, 0.3, 1.0, 2.0])}, {"w": jnp.array([-0.5, 0.5, 1.5, 1.0])}
    x = jnp.array([1.0, -2.0, 0.5, 1.0])
    for order in (1, 2, 3, 4):
        assert rel_diff(taylorize(f, p0, order)(p, x), taylorize_nested(f, p0, order)(p, x)) < 1e-12


def test_static_arguments_pass_through():
    # Python flags, strings and numbers are not traced, as with apply_fn and the nested form.
    def f(p, x, train, mode, scale):
        h = jnp.tanh(x @ p)
        return (h * scale if train and mode == "a" else h).sum()

    p0 = jnp.ones((3, 2)) * 0.1
    x = jnp.ones((4, 3))
    for args in [(x, True, "a", 2.0), (x, False, "b", 3.0)]:
        got = taylorize(f, p0, 2)(p0 + 0.2, *args)
        assert jnp.allclose(got, taylorize_nested(f, p0, 2)(p0 + 0.2, *args))


def mixed_network(kind):
    """ReLU and smooth layers in one network (dense or convolutional), θ0, a batch and a θ."""
    keys = iter(jax.random.split(jax.random.key(11), 8))
    if kind == "dense":
        shapes, x = [(5, 6), (6, 6), (6, 6), (6, 3)], jax.random.normal(next(keys), (3, 5))
        layer = lambda h, w: h @ w
    else:
        shapes, x = [(3, 3, 2, 4), (3, 3, 4, 4), (3, 3, 4, 3)], jax.random.normal(next(keys), (2, 9, 9, 2))
        layer = lambda h, w: lax.conv_general_dilated(h, w, (1, 1), "VALID",
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    params0 = [jax.random.normal(next(keys), s) / math.sqrt(math.prod(s[:-1])) for s in shapes]
    acts = [jax.nn.relu, jnp.tanh, jax.nn.relu]

    def apply(p, x):
        h = x
        for w, act in zip(p[:-1], acts):
            h = act(layer(h, w))
        return layer(h, p[-1]).reshape(h.shape[0], -1)

    return apply, params0, x, perturbed(params0, 0.5)


NETS = [f"{kind}-{act}" for kind in ("dense", "conv", "residual") for act in ("relu", "tanh")]
NETS += ["mixed-dense", "mixed-conv"]
QUICK = ("dense-relu", "dense-tanh", "conv-relu")  # the default suite's share
# Order 5 on the dense networks only, orders 1 and 3 of the ResNets: nested JVPs run eagerly
# here (compiling them takes longer), and on the convolutional ones every order took minutes.


@pytest.mark.parametrize("net,orders", [
    pytest.param(net, orders,
                 id=f"{net}-order{','.join(map(str, orders))}",
                 marks=() if net in QUICK and orders[0] == 1 else pytest.mark.slow)
    for net in NETS for orders in ((1, 3) if net.startswith("residual") else (1, 2, 3),
                                   (4, 5) if net.startswith(("dense", "mixed-dense")) else (4,))])
def test_taylor_mode_and_its_gradients_equal_nested_jvps(net, orders):
    # Only the partial sums the output needs are computed: values AND gradients must still
    # be those of the full expansion, for every order, where the program between bilinear
    # layers is linear (ReLU) and where it is not (tanh), and in networks mixing both.
    family, kind = net.split("-")
    apply, params0, x, params = (mixed_network(kind) if family == "mixed"
                                 else network(family, kind))
    loss = lambda fn: lambda p: jnp.sum(jnp.sin(fn(p, x)))
    # Eagerly: compiling nested JVPs of order 5 takes longer than running them op by op.
    for order in orders:
        fast, ref = taylorize(apply, params0, order), taylorize_nested(apply, params0, order)
        assert rel_diff(fast(params, x), ref(params, x)) < 1e-10, order
        g1 = jax.grad(loss(fast))(params)
        g2 = jax.grad(loss(ref))(params)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
            assert rel_diff(a, b) < 1e-10, order


def test_an_order_at_least_the_depth_costs_two_forward_passes():
    # A ReLU network of L bilinear layers is a polynomial of degree L in θ once its gates are
    # frozen at θ0, so for k >= L its Taylor model is that gated network evaluated at θ: the
    # gates (one pass at θ0) and one pass at θ. The full series would cost 2k+1 passes per
    # layer at the top; XLA's own FLOP count shows which was compiled.
    widths = [64, 256, 256, 256, 10]
    keys = jax.random.split(jax.random.key(0), len(widths))
    params0 = [jax.random.normal(k, (a, b)) / math.sqrt(a)
               for k, a, b in zip(keys, widths[:-1], widths[1:])]
    x = jax.random.normal(keys[-1], (32, widths[0]))

    def apply(p, x):
        for w in p[:-1]:
            x = jax.nn.relu(x @ w)
        return x @ p[-1]

    def gated_at(p, x):
        h, h0 = x, x
        for w, w0 in zip(p[:-1], params0[:-1]):
            h0, h = jax.nn.relu(h0 @ w0), jnp.where(h0 @ w0 > 0, h @ w, 0.0)
        return h @ p[-1]

    params = perturbed(params0, 0.5)
    flops = lambda f: jax.jit(f).lower(params, x).compile().cost_analysis()["flops"]
    for order in (4, 5):
        fk = taylorize(apply, params0, order)
        assert rel_diff(fk(params, x), gated_at(params, x)) < 1e-12
        assert flops(fk) < 2.1 * flops(apply), (order, flops(fk) / flops(apply))


def test_compiled_gradients_equal_nested_jvps():
    # Under jit, XLA's algebraic simplifier once miscompiled the gradient of the partial sums
    # a product at the output needs (a cumsum): exp(u)·u at order 3 was off by 10%.
    u = lambda p, x: p["a"] * x + p["a"] * p["b"] * x * x
    f = lambda p, x: jnp.exp(u(p, x)) * u(p, x)
    p0, p = {"a": 0.7, "b": -0.3}, {"a": 1.1, "b": 0.2}
    p0, p = (jax.tree.map(jnp.float64, t) for t in (p0, p))
    x = jnp.linspace(-0.9, 1.3, 6)
    nets = [(f, p0, x, p), mixed_network("dense")]
    for apply, params0, data, params in nets:
        loss = lambda fn: jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(fn(q, data)))))
        for order in (2, 3, 4):
            g1 = loss(taylorize(apply, params0, order))(params)
            g2 = loss(taylorize_nested(apply, params0, order))(params)
            for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
                assert rel_diff(a, b) < 1e-10, order
