"""Series rules of smooth primitives and products of two series, against nested JVPs (float64).

Every rule is compared with `taylorize_nested`, an independent construction, for orders 1-5:
values and gradients (reverse mode through the rule's own JVP), and where it matters the
derivatives of a moving expansion point and forward-mode derivatives.
"""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from taylorcli import taylorize, taylorize_nested
from taylorcli.bench.transformer import Block, ViT


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def rel_diff(a, b):
    # Relative to the larger entry of the reference; two exact zeros agree.
    return float(jnp.max(jnp.abs(a - b))) / max(float(jnp.max(jnp.abs(b))), 1e-300)


def assert_equal_to_nested(f, p0, p, *args, orders=range(1, 6), tol=1e-10, reference=None):
    """Values and gradients of taylorize equal those of taylorize_nested, order by order."""
    # Compiled: running a few thousand small operations eagerly compiles each one on first use.
    loss = lambda fn: jax.jit(jax.value_and_grad(lambda q: jnp.sum(jnp.sin(fn(q, *args)))))
    for order in orders:
        fast, ref = taylorize(f, p0, order), taylorize_nested(reference or f, p0, order)
        assert rel_diff(jax.jit(fast)(p, *args), jax.jit(ref)(p, *args)) < tol, order
        # Relative to the largest gradient entry: some leaves are exactly 0 (a key bias under
        # softmax), where both constructions give rounding noise.
        got, want = loss(fast)(p)[1], loss(ref)(p)[1]
        scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(want))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert float(jnp.max(jnp.abs(a - b))) < tol * scale, order


# Each primitive on a positive argument where it needs one; `u` below is a series of degree 2.
# A pair is (function, the same function as JAX's own JVP rules differentiate exactly there).
PRIMITIVES = {
    "exp": jnp.exp,
    "expm1": jnp.expm1,
    "log": lambda u: jnp.log(u + 2.0),
    "log1p": lambda u: jnp.log1p(u + 1.0),
    "tanh": jnp.tanh,
    "logistic": jax.nn.sigmoid,
    "erf": lax.erf,
    "erfc": lax.erfc,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "sinh": jnp.sinh,
    "cosh": jnp.cosh,
    "sqrt": lambda u: jnp.sqrt(u + 2.0),
    "rsqrt": lambda u: lax.rsqrt(u + 2.0),
    "square": jnp.square,
    "integer_pow 3": lambda u: u ** 3,
    "integer_pow 5": lambda u: u ** 5,
    "integer_pow -2": lambda u: (u + 2.0) ** -2,
    "pow 1.5": lambda u: (u + 2.0) ** 1.5,
    # JAX's JVP of x ** 2.0 is NaN from the third derivative on at x = 0 (0 · 0^-1); Taylor
    # mode treats an integral exponent as the polynomial it is, as nested JVPs of u · u do.
    "pow 2.0 at 0": (lambda u: (u - u[2]) ** 2.0, lambda u: (u - u[2]) * (u - u[2])),
    "div by a series": lambda u: jnp.sin(u) / (u * u + 1.0),
    "constant by a series": lambda u: 1.5 / (u + 2.0),
    "gelu (tanh)": lambda u: jax.nn.gelu(u, approximate=True),
    "gelu (erf)": lambda u: jax.nn.gelu(u, approximate=False),
    "softmax": lambda u: jax.nn.softmax(u.reshape(2, 3), axis=-1),
    "product of two series": lambda u: jnp.tanh(u) * jnp.exp(u),
}


@pytest.mark.parametrize("name", list(PRIMITIVES))
@pytest.mark.parametrize("orders", [pytest.param((4,), id="order4"),
                                    pytest.param((2, 5), id="orders2,5", marks=pytest.mark.slow)])
def test_each_smooth_primitive_equals_nested(name, orders):
    # u = a x + a b x²: a degree-2 series in Δ, so orders 3-5 take the rules' short-input path.
    prim, exact = PRIMITIVES[name] if isinstance(PRIMITIVES[name], tuple) else (PRIMITIVES[name],) * 2
    series = lambda fn: lambda p, x: fn(p["a"] * x + p["a"] * p["b"] * x * x)
    p0 = {"a": jnp.float64(0.7), "b": jnp.float64(-0.3)}
    p = {"a": jnp.float64(1.1), "b": jnp.float64(0.2)}
    assert_equal_to_nested(series(prim), p0, p, jnp.linspace(-0.9, 1.3, 6), orders=orders,
                           reference=series(exact))


@pytest.mark.slow
def test_smooth_primitives_of_a_full_series_equal_nested():
    # Inputs that carry every coefficient (after a smooth layer), all primitives in one function.
    def f(p, x):
        u = jnp.tanh(p["w"] * x) + p["b"]
        return jnp.stack([PRIMITIVES[n](u) for n in PRIMITIVES
                          if n != "softmax" and not isinstance(PRIMITIVES[n], tuple)]).ravel()

    p0 = {"w": jnp.float64(0.8), "b": jnp.float64(0.1)}
    p = {"w": jnp.float64(0.5), "b": jnp.float64(-0.2)}
    assert_equal_to_nested(f, p0, p, jnp.linspace(-1.0, 1.0, 6), orders=(3,))


@pytest.mark.slow
def test_a_moving_expansion_point_and_forward_mode():
    # Derivatives with respect to the data move x0 itself (the rule's δx0 term); forward mode
    # goes through the rules' custom JVPs; second derivatives through their JVPs in turn.
    f = lambda p, x: jnp.exp(jnp.tanh(p * x)) / (1.0 + lax.rsqrt(1.0 + (p * x) ** 2))
    p0, p = jnp.float64(0.6), jnp.float64(1.0)
    x = jnp.linspace(-1.0, 1.5, 5)
    for order in (2, 4):
        fast, ref = taylorize(f, p0, order), taylorize_nested(f, p0, order)
        gx = lambda fn: jax.grad(lambda x: jnp.sum(jnp.sin(fn(p, x))))(x)
        assert rel_diff(gx(fast), gx(ref)) < 1e-10, order
        jv = lambda fn: jax.jvp(lambda q: fn(q, x), (p,), (jnp.float64(0.3),))[1]
        assert rel_diff(jv(fast), jv(ref)) < 1e-10, order
    fast, ref = taylorize(f, p0, 3), taylorize_nested(f, p0, 3)
    hess = lambda fn: jax.grad(jax.grad(lambda q: jnp.sum(fn(q, x))))(p)
    assert rel_diff(hess(fast), hess(ref)) < 1e-10


@pytest.mark.slow
def test_products_of_two_series():
    # dot_general and mul of two series-carrying operands: every pair (i, j) in one batched call.
    def f(p, x):
        q, k = jnp.tanh(x @ p["q"]), jnp.tanh(x @ p["k"])
        scores = jnp.einsum("td,sd->ts", q, k)
        return scores @ (q * k) + jnp.einsum("ts,td->d", jnp.exp(scores), k)[None]

    keys = jax.random.split(jax.random.key(0), 3)
    p0 = {"q": jax.random.normal(keys[0], (3, 4)), "k": jax.random.normal(keys[1], (3, 4))}
    p = jax.tree.map(lambda a: a + 0.3, p0)
    assert_equal_to_nested(f, p0, p, jax.random.normal(keys[2], (5, 3)), orders=(2, 3, 5))


def block_and_params(exact_gelu):
    """A transformer block (LayerNorm, 2-head softmax attention, GELU MLP, residuals), θ0 and θ."""
    block = Block(dim=4, heads=2, mlp_dim=6, exact_gelu=exact_gelu)
    x = jax.random.normal(jax.random.key(1), (2, 3, 4))
    p0 = jax.tree.map(lambda a: a.astype(x.dtype), block.init(jax.random.key(0), x)["params"])
    keys = iter(jax.random.split(jax.random.key(2), 32))
    p = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(next(keys), a.shape), p0)
    return lambda q, x: block.apply({"params": q}, x), p0, p, x


@pytest.mark.slow
@pytest.mark.parametrize("gelu,orders", [("tanh", (1, 2, 4)), ("erf", (3, 5))], ids=["tanh", "erf"])
def test_transformer_block_equals_nested_at_every_order(gelu, orders):
    # Every order 1-5 once across the two GELUs (each order of nested JVPs compiles a program
    # that grows like 3^k: all five for both took two minutes).
    apply, p0, p, x = block_and_params(gelu == "erf")
    assert_equal_to_nested(apply, p0, p, x, orders=orders)


@pytest.mark.slow
def test_the_bench_transformer_equals_nested():
    vit = ViT(num_classes=3, patch=2, dim=4, depth=2, heads=2, mlp_dim=6)
    images = jax.random.normal(jax.random.key(3), (2, 4, 4, 1))
    v0 = jax.tree.map(lambda a: a.astype(images.dtype), vit.init(jax.random.key(0), images)["params"])
    keys = iter(jax.random.split(jax.random.key(4), 64))
    v = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(next(keys), a.shape), v0)
    assert_equal_to_nested(lambda q, x: vit.apply({"params": q}, x), v0, v, images, orders=(3,))
