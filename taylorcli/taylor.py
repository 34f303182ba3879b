"""Taylorized models: f_k(θ) = Σ_{j≤k} D^j f(θ0)[Δ,…,Δ] / j!, with Δ = θ − θ0.

Two constructions of the same function:

* `taylorize` propagates truncated Taylor series in t through the jaxpr of the model, with
  the parameters θ0 + tΔ (Taylor mode); f_k(θ) is the output's partial sum S_k at t = 1.
  A value's coefficients x_1 … x_k are one stacked array (leading axis k), so a linear
  primitive is one batched call however high the order. ReLU is exact and cheap (its gate is
  frozen at the expansion point). The smooth primitives transformers use (exp, log, tanh,
  logistic, erf/erfc, sin/cos, sqrt, rsqrt, square, integer and constant powers, division)
  have series rules of their own (`_smooth_lists`: the standard recurrences, e.g.
  y_n = (1/n) Σ_j j x_j y_{n-j} for exp), whose derivatives are one product of series with
  f'(x(t)) (`_smooth_series`), never an unrolled recurrence. A product of two series
  (attention's QKᵀ and AV) is one batched call over every pair of coefficients (`_product`).
  Anything else (custom JVPs, control flow, reduce_max, ...) falls back to nested JVPs of that
  one primitive, so every function built from standard primitives is covered.
* `taylorize_nested` is the paper's construction (Bai et al. 2020, eq. 5): nested
  Jacobian-vector products, about 2^k–3^k base passes. It is the reference the fast path is
  tested against.

Taylor mode computes only what S_k needs. Two passes over the jaxpr before evaluating it:
forward, each value's degree in t (a weight has degree 1, a bilinear layer adds its
operands' degrees, capped at k); backward, from the output's S_k, which partial sums
S_j = x_0 + … + x_j each value must supply. Between bilinear layers a piecewise-linear
network (gated ReLU, pooling, sums, reshapes) is linear in the coefficients given the
primal, so S_j(y) needs only S_j of its operands; a layer y = B(a, W0 + ΔW) needs S_j(a)
and S_{j−1}(a) for each wanted j, and an index past a value's degree is clipped to it.
So s layers below the output a value supplies at most s+1 sums, and at most its depth from
the input, where the full series would be k coefficients everywhere. Each wanted S_j(y) is
then written in the cheapest of three exact forms (`_weight_plan`):
B(S_j a, W0) + B(S_{j−1} a, ΔW), or B(S_j a, W) − B(a_j, ΔW), or B(S_{j−1} a, W) + B(a_j, W0),
so consecutive sums share a call and a sum past the input's degree is the one call
B(S_d a, W); gradients follow by autodiff of those few calls. A smooth primitive, or a
product of two series, needs every coefficient of its operands, and they are computed as
before (`_apply`). Exact, not an approximation: equal to the nested construction in float64.
For CNN-4-64 (5 bilinear layers) an order-4 training step costs 2.3 full steps of XLA
FLOPs instead of 4.5 (results/README.md, "Speed"); for the benchmark's transformer (`bench.transformer`)
8.0 full steps, against 24 for nested JVPs (`python -m taylorcli.bench --arch vit`).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jax.extend import core as jcore

__all__ = ["taylorize", "taylorize_nested", "truncation_plan"]


# ---------------------------------------------------------------------------
# The reference: nested JVPs.


def taylorize_nested(apply_fn: Callable, params0: Any, order: int) -> Callable:
    """Order-k Taylorized `apply_fn` around `params0` via nested JVPs (the paper's eq. 5)."""
    _check_order(order)

    def f_k(params, *args):
        delta = jax.tree.map(jnp.subtract, params, params0)

        def derivatives(n):
            # [f, R f, …, R^n f] at the point given; R is the JVP along Δ.
            if n == 0:
                return lambda p: (apply_fn(p, *args),)
            lower = derivatives(n - 1)

            def with_next(p):
                primals, tangents = jax.jvp(lower, (p,), (delta,))
                return tuple(primals) + (tangents[-1],)

            return with_next

        terms = derivatives(order)(params0)
        return jax.tree.map(
            lambda *ts: sum(t / math.factorial(j) for j, t in enumerate(ts)), *terms
        )

    return f_k


# ---------------------------------------------------------------------------
# Taylor mode.


def taylorize(apply_fn: Callable, params0: Any, order: int) -> Callable:
    """Order-k Taylorized `apply_fn` around `params0`, by Taylor-mode series propagation."""
    _check_order(order)
    if order == 1:
        return _linearize(apply_fn, params0)
    return _series(apply_fn, params0, order)


def _series(apply_fn: Callable, params0: Any, order: int) -> Callable:
    """The series interpreter itself, for any order (taylorize takes a shortcut at order 1)."""

    def f_k(params, *args):
        delta = jax.tree.map(jnp.subtract, params, params0)
        p_leaves, p_tree = jax.tree.flatten(params0)
        d_leaves = p_tree.flatten_up_to(delta)
        a_leaves, a_tree = jax.tree.flatten(args)
        # Arrays are traced; anything else (flags, strings, Python numbers) stays static, as it
        # does for apply_fn itself and for the nested construction.
        traced = [i for i, x in enumerate(a_leaves) if isinstance(x, (jax.Array, np.ndarray))]

        def flat_fn(*leaves):
            p = jax.tree.unflatten(p_tree, leaves[: len(p_leaves)])
            a = list(a_leaves)
            for i, x in zip(traced, leaves[len(p_leaves):]):
                a[i] = x
            return apply_fn(p, *jax.tree.unflatten(a_tree, a))

        arrays = list(p_leaves) + [a_leaves[i] for i in traced]
        specs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x),
                                      weak_type=getattr(x, "weak_type", False)) for x in arrays]
        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*specs)
        inputs = [
            _Series(jnp.asarray(p0), jnp.asarray(d)[None]) if order > 0 else jnp.asarray(p0)
            for p0, d in zip(p_leaves, d_leaves)
        ] + [a_leaves[i] for i in traced]
        # The model's output is S_k, the partial sum of its series up to the order: nothing else.
        want = [frozenset({order})] * len(closed.jaxpr.outvars)
        outs = _eval_jaxpr(closed.jaxpr, closed.consts, inputs, order, want)
        sums = [_sum_stack(o, (order,))[0] if _has_series(o) else o for o in outs]
        return jax.tree.unflatten(jax.tree.structure(out_shape), sums)

    return f_k


def _linearize(apply_fn: Callable, params0: Any) -> Callable:
    """Order 1: f(θ0) + J(θ0)Δ is one forward-mode JVP, Taylor mode's first-order case.

    The series interpreter computes the same three products per bilinear layer, but XLA fuses
    jax.jvp's program better: a CNN-4-64 training step at batch 32 takes 13% less time (CPU).
    """

    def f_1(params, *args):
        delta = jax.tree.map(jnp.subtract, params, params0)
        y0, dy = jax.jvp(lambda p: apply_fn(p, *args), (params0,), (delta,))
        return jax.tree.map(jnp.add, y0, dy)

    return f_1


def _check_order(order: int) -> None:
    if not isinstance(order, int) or isinstance(order, bool) or order < 0:
        raise ValueError(f"order must be an integer >= 0, got {order!r}")


@dataclass(frozen=True)
class _Series:
    """A value x(t) = x0 + Σ_{n=1..d} xs[n-1] t^n, truncated at the model's order."""

    x0: jax.Array
    xs: jax.Array  # [d, *x0.shape], d >= 1

    @property
    def degree(self) -> int:
        return self.xs.shape[0]


@dataclass(frozen=True)
class _Sums:
    """A value known only by some partial sums S_j = x0 + x_1 + … + x_j of its series.

    `s[i]` is S_{idx[i]}; a sum past the value's degree equals the sum at its degree.
    """

    x0: jax.Array
    idx: tuple[int, ...]
    s: jax.Array | None  # [len(idx), *x0.shape], None when only the primal is wanted
    degree: int


def _has_series(v) -> bool:
    return isinstance(v, (_Series, _Sums))


def _degree(v) -> int:
    return v.degree if _has_series(v) else 0


def _primal(v):
    return v.x0 if _has_series(v) else v


def _sum_stack(v, indices):
    """S_j(v) for j in `indices`, stacked on a leading axis (a constant is its own sum)."""
    if isinstance(v, _Sums):
        if tuple(indices) == v.idx:
            return v.s
        rows = [v.x0 if j == 0 else v.s[v.idx.index(min(j, v.degree))] for j in indices]
    elif isinstance(v, _Series):
        # Running sums written out, not jnp.cumsum: XLA's algebraic simplifier miscompiles the
        # gradient of a cumsum (reduce_window) used this way under jit (JAX 0.10.2, CPU: the
        # order-3 gradient of exp(u)·u was off by 10%, eager and algsimp-disabled runs exact).
        partial = [v.x0]
        for row in jnp.unstack(v.xs[: min(max(indices), v.degree)]):
            partial.append(partial[-1] + row)
        rows = [partial[min(j, v.degree)] for j in indices]
    else:
        return jnp.broadcast_to(v, (len(indices),) + jnp.shape(v))
    return jnp.stack(rows)


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _coeffs(v, degree: int):
    """Coefficients 1..degree of v as a [degree, …] array (zeros past its own degree)."""
    if isinstance(v, _Series):
        pad = degree - v.degree
        return v.xs if pad == 0 else jnp.concatenate([v.xs, jnp.zeros((pad,) + v.x0.shape, v.xs.dtype)])
    return jnp.zeros((degree,) + jnp.shape(v), jnp.result_type(v))


def _coeffs_as(v, degree: int, shape):
    """Coefficients 1..degree of v, broadcast (numpy-style, per coefficient) to `shape`."""
    c = _coeffs(v, degree)
    c = c.reshape((degree,) + (1,) * (len(shape) - (c.ndim - 1)) + c.shape[1:])
    return jnp.broadcast_to(c, (degree,) + tuple(shape))


def _make(x0, xs):
    """A _Series, or the plain primal when every coefficient is structurally zero."""
    return _Series(x0, xs) if xs is not None and xs.shape[0] > 0 else x0


def _bind(eqn, vals) -> list:
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def _sub_jaxpr(eqn):
    """The body of a call primitive, as (jaxpr, consts)."""
    sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    return (sub.jaxpr, sub.consts) if isinstance(sub, jcore.ClosedJaxpr) else (sub, [])


def _eval_jaxpr(jaxpr, consts, inputs, order, out_demands):
    """Evaluate `jaxpr` on series inputs, computing of each value only what `out_demands` need."""
    degrees, rules = _degrees(jaxpr, [_degree(v) for v in inputs], order)
    demand = _demands(jaxpr, degrees, rules, out_demands, order)
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, inputs):
        env[var] = val
    for eqn, rule in zip(jaxpr.eqns, rules):
        invals = [read(v) for v in eqn.invars]
        wanted = [demand.get(v, _NONE) for v in eqn.outvars]
        if rule == "call":
            sub, sub_consts = _sub_jaxpr(eqn)
            outs = _eval_jaxpr(sub, sub_consts, invals, order, wanted)
        elif rule == "const":
            outs = _bind(eqn, invals)
        elif rule == "flat":
            outs = _bind(eqn, [_primal(v) for v in invals])
        elif rule == "series" and not any(wanted):
            # Only the primal is used (softmax's reduce_max feeds a stop_gradient): no series.
            outs = [_Sums(p, (), None, degrees[var]) if _is_float(p) else p
                    for p, var in zip(_bind(eqn, [_primal(v) for v in invals]), eqn.outvars)]
        elif rule == "series" or any(w is _ALL for w in wanted):
            outs = _apply(eqn, invals, order)
        else:
            wanted_sums = tuple(sorted(frozenset().union(*wanted)))
            outs = _SUM_RULES[rule](eqn, invals, wanted_sums, degrees[eqn.outvars[0]])
        for var, val in zip(eqn.outvars, outs):
            if not isinstance(var, jcore.DropVar):
                env[var] = val
    return [read(v) for v in jaxpr.outvars]


# Primitives that wrap a sub-jaxpr whose Taylor series is that of its body.
_CALLS = {"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint", "custom_vjp_call"}
# Jointly linear in their floating-point operands (integer/bool operands are indices or masks).
_LINEAR = {
    "neg", "add", "sub", "add_any", "reshape", "broadcast_in_dim", "transpose", "squeeze",
    "expand_dims", "reduce_sum", "slice", "dynamic_slice", "dynamic_update_slice", "gather",
    "scatter-add", "pad", "concatenate", "convert_element_type", "copy", "copy_p", "rev",
    "select_n", "reduce_window_sum", "cumsum", "real", "imag", "conj", "split", "reshard",
    "unstack",
}
# Bilinear in their two operands.
_BILINEAR = {"mul", "dot_general", "conv_general_dilated"}
# Piecewise constant: every derivative vanishes.
_FLAT = {"sign", "floor", "ceil", "round", "stop_gradient", "is_finite"}
# Smooth unary primitives with a series rule of their own (`_smooth_lists`); `pow` only with a
# literal exponent, and `div` by a series is a product with the reciprocal (`_divide`).
_SMOOTH = {
    "exp", "expm1", "log", "log1p", "tanh", "logistic", "erf", "erfc", "sin", "cos", "sinh",
    "cosh", "sqrt", "rsqrt", "square", "integer_pow", "pow",
}


def _apply(eqn, invals, order):
    """Output series (every coefficient) of one equation given its input series."""
    if not any(isinstance(v, _Series) for v in invals):
        return _bind(eqn, invals)
    name = eqn.primitive.name
    if not any(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in eqn.outvars) or name in _FLAT:
        return _bind(eqn, [_primal(v) for v in invals])
    if name in _CALLS:
        sub, consts = _sub_jaxpr(eqn)
        return _eval_jaxpr(sub, consts, invals, order, [_ALL] * len(eqn.outvars))
    if name == "custom_jvp_call" and _is_relu(eqn):
        return [_relu_series(eqn, invals[0])]
    if name in _LINEAR:
        return _linear(eqn, invals)
    if name in _BILINEAR:
        return [_bilinear(eqn, invals[0], invals[1], order)]
    if name == "div" and not isinstance(invals[1], _Series):
        return _linear(eqn, invals, linear_in=(0,))
    if name in ("max", "min"):
        return [_select_extreme(eqn, invals)]
    if name == "div":
        return [_divide(eqn, invals[0], invals[1], order)]
    if name in _SMOOTH and not any(isinstance(v, _Series) for v in invals[1:]) and (
            name != "pow" or _literal_exponent(eqn) is not None):
        return [_smooth(eqn, invals[0], order)]
    return _nested(eqn, invals, order)


def _linear(eqn, invals, linear_in=None):
    """Linear jointly in the float operands (or only in those listed in `linear_in`)."""
    y0 = _bind(eqn, [_primal(v) for v in invals])
    degree = max(v.degree for v in invals if isinstance(v, _Series))
    args, axes = [], []
    for i, v in enumerate(invals):
        if isinstance(v, _Series) or (_is_float(v) and (linear_in is None or i in linear_in)):
            args.append(_coeffs(v, degree))
            axes.append(0)
        else:
            args.append(v)
            axes.append(None)
    ys = jax.vmap(lambda *a: _bind(eqn, a), in_axes=axes)(*args)
    return [_make(p, c) if _is_float(p) else p for p, c in zip(y0, ys)]


def _bilinear(eqn, a, b, order):
    """y_n = Σ_{i+j=n} B(a_i, b_j): two series of degree >= 2 by `_product`, else as follows.

    For a layer (activation of degree k, the model's order) x (weight θ0 + Δ) this is 2k+1
    forward passes in three calls: the primal B(a_0, W0), the same for every order (XLA
    shares it across a lockstep step); B(a_1..a_k, W0); and B(a_0..a_{k-1}, ΔW); an earlier
    layer, of degree d < k, takes 2d+2 (B(a_0..a_d, ΔW)). The last call takes a_0
    stacked with the higher coefficients, so the weight gradient Σ_i a_i ⊗ g_{i+1} is one
    convolution over a k-times larger batch with one transposed copy of its input. Taking
    B(a_0, ΔW) apart saves one input-gradient pass that a_0 does not need, but on the CPU
    the second weight-gradient convolution and transposed copy cost more (CNN-4-64, batch
    32: order 4 step 375 ms apart, 288 ms stacked).
    """
    da = a.degree if isinstance(a, _Series) else 0
    db = b.degree if isinstance(b, _Series) else 0
    if min(da, db) >= 2:
        return _product(lambda x, y: _bind(eqn, (x, y))[0], a, b, order,
                        elementwise=eqn.primitive.name == "mul")
    degree = min(order, da + db)
    swap = db > da
    (hi, dhi), (lo, dlo) = ((b, db), (a, da)) if swap else ((a, da), (b, db))

    def call(h, l):
        return _bind(eqn, (l, h) if swap else (h, l))[0]

    lo_coeff = lambda j: _primal(lo) if j == 0 else lo.xs[j - 1]
    y0 = call(_primal(hi), _primal(lo))
    total = None
    for j in range(min(dlo, degree) + 1):
        count = min(dhi, degree - j)
        if j == 0:  # B(hi_i, lo_0) for i = 1..count lands on coefficients 1..count
            first, his = 1, hi.xs[:count]
        else:  # B(hi_i, lo_j) for i = 0..count lands on coefficients j..j+count
            first, his = j, jnp.concatenate([_primal(hi)[None], hi.xs[:count]])
        piece = jax.vmap(lambda h, j=j: call(h, lo_coeff(j)))(his)
        widths = [(first - 1, degree - first + 1 - piece.shape[0])] + [(0, 0)] * (piece.ndim - 1)
        piece = jnp.pad(piece, widths)
        total = piece if total is None else total + piece
    return _make(y0, total)


@functools.lru_cache(maxsize=None)
def _pairs(da: int, db: int, degree: int):
    """The pairs (i, j) of the Cauchy product of series of degrees da, db, 1 <= i + j <= degree.

    Returns (i, j, groups): the pairs as two index lists ordered by i + j, and per output
    coefficient n = 1..degree the positions of its pairs.
    """
    pairs = [(i, n - i) for n in range(1, degree + 1) for i in range(max(0, n - db), min(da, n) + 1)]
    groups = tuple(tuple(p for p, (i, j) in enumerate(pairs) if i + j == n)
                   for n in range(1, degree + 1))
    return tuple(i for i, _ in pairs), tuple(j for _, j in pairs), groups


def _product(bind, a, b, order, elementwise=False):
    """y = B(a, b) for two series: y_n = Σ_{i+j=n} B(a_i, b_j), n = 1..k.

    An elementwise product is written coefficient by coefficient, which XLA fuses into one loop
    reading each coefficient once. Any other B (dot_general, a convolution) is one batched call
    over every pair (i, j) with 1 <= i + j <= k (k(k+3)/2 pairs for two series of degree k), so
    the program holds one call of B however high the order. Coefficients are split with
    `unstack` and joined with `stack`, whose transposes are each other: the backward pass is as
    compact as the forward (see `_apply_series`).
    """
    da, db = a.degree, b.degree
    degree = min(order, da + db)
    ca = [a.x0, *jnp.unstack(a.xs)]
    cb = [b.x0, *jnp.unstack(b.xs)]
    y0 = bind(a.x0, b.x0)
    if elementwise:
        return _Series(y0, jnp.stack([_conv(ca, cb, n) for n in range(1, degree + 1)]))
    i, j, groups = _pairs(da, db, degree)
    terms = jnp.unstack(jax.vmap(bind)(jnp.stack([ca[n] for n in i]), jnp.stack([cb[n] for n in j])))
    return _Series(y0, jnp.stack([functools.reduce(jnp.add, [terms[p] for p in group])
                                  for group in groups]))



def _is_relu(eqn) -> bool:
    """Whether a custom_jvp_call is jax.nn.relu (max(x, 0), zero derivative at 0)."""
    jaxpr = eqn.params["call_jaxpr"].jaxpr
    while len(jaxpr.eqns) == 1 and jaxpr.eqns[0].primitive.name in _CALLS:
        inner = jaxpr.eqns[0].params["jaxpr"]
        jaxpr = inner.jaxpr if isinstance(inner, jcore.ClosedJaxpr) else inner
    if len(jaxpr.eqns) != 1 or jaxpr.eqns[0].primitive.name != "max":
        return False
    operands = jaxpr.eqns[0].invars
    return any(isinstance(o, jcore.Literal) and float(o.val) == 0.0 for o in operands)


def _relu_series(eqn, x):
    # ReLU is piecewise linear: higher coefficients pass where the expansion point is positive.
    y0 = _bind(eqn, [x.x0])[0]
    return _Series(y0, jnp.where(x.x0 > 0, x.xs, jnp.zeros_like(x.xs)))


def _select_extreme(eqn, invals):
    # max/min: the output follows one operand, chosen at the expansion point; ties average,
    # as in JAX's own JVP rule for these primitives.
    a, b = invals
    y0 = _bind(eqn, [_primal(a), _primal(b)])[0]
    a0, b0 = _primal(a), _primal(b)
    wa = jnp.where(a0 == y0, jnp.where(b0 == y0, 0.5, 1.0), 0.0).astype(y0.dtype)
    degree = max(v.degree for v in invals if isinstance(v, _Series))
    # Operands may be scalar literals broadcast by the primitive itself.
    ca, cb = (_coeffs_as(v, degree, y0.shape) for v in (a, b))
    xs = wa * ca + (1 - wa) * cb
    return _Series(y0, xs)


# ---------------------------------------------------------------------------
# Series rules of smooth primitives, on stacked coefficients.
#
# A value's coefficients x_1 … x_k stay one stacked array between rules; a rule splits them
# into a list of arrays (one per power of t), runs its recurrence (y_n = (1/n) Σ_j j x_j g_{n-j}
# and the like, sequential in n) and stacks the result. The lists are deliberate: XLA fuses
# each rule's products of coefficients into one elementwise loop that reads every coefficient
# once, where the batched alternatives measured slower on the CPU (a reduction over the stacked
# axis is a slow reduce kernel there, up to 30x a copy; a gathered Toeplitz matrix or a
# depthwise convolution over the coefficients were slower still). Derivatives never go through
# a recurrence: d/dε f(x(t) + ε δx(t)) = f'(x(t)) δx(t), so a rule also returns
# g = [g_0 … g_k], the coefficients of f'(x(t)), and `_smooth_series`'s JVP is one product of
# series with g (its transpose, the backward pass, one more).


def _conv(u, v, n, lo=0):
    """Σ_{i=lo..n} u[i] v[n-i] of two coefficient lists (missing coefficients are zero), or None."""
    terms = [u[i] * v[n - i] for i in range(lo, min(n, len(u) - 1) + 1) if n - i < len(v)]
    return functools.reduce(jnp.add, terms) if terms else None


def _square_at(u, n):
    """Σ_i u[i] u[n-i], each cross term computed once."""
    half = [u[i] * u[n - i] for i in range(0, (n + 1) // 2) if n - i < len(u)]
    total = 2 * functools.reduce(jnp.add, half) if half else None
    if n % 2 == 0 and n // 2 < len(u):
        total = u[n // 2] * u[n // 2] if total is None else total + u[n // 2] * u[n // 2]
    return total


def _chain(dx, g, n):
    """(1/n) Σ_{j≥1} dx[j] g[n-j], with dx[j] = j x_j: coefficient n of ∫ g(t) x'(t) dt."""
    total = _conv(dx, g, n, 1)
    if total is None:
        return jnp.zeros_like(g[0])
    return total if n == 1 else total * (1.0 / n)


def _derivative(x):
    """[·, 1·x_1, 2·x_2, …]: x'(t)'s coefficient j-1 at index j (index 0 unused)."""
    return [None, *(x[j] if j == 1 else j * x[j] for j in range(1, len(x)))]


def _exp_list(y0, dx, k):
    """Coefficients 0..k of exp(x(t)) from exp(x0) (y' = y x')."""
    y = [y0]
    for n in range(1, k + 1):
        y.append(_chain(dx, y, n))
    return y


def _reciprocal_list(x, k):
    """Coefficients 0..k of 1/x(t) from x's list: r_n = -r0 Σ_{j≥1} x_j r_{n-j}."""
    r = [1 / x[0]]
    for n in range(1, k + 1):
        total = _conv(x, r, n, 1)
        r.append(jnp.zeros_like(r[0]) if total is None else -r[0] * total)
    return r


def _power_list(x, c, y0, k):
    """Coefficients 0..k of x(t)^c for a constant c, from y0 = x0^c (x y' = c y x')."""
    inv, y = 1 / x[0], [y0]
    for n in range(1, k + 1):
        terms = [((c + 1) * j - n) * (x[j] * y[n - j]) for j in range(1, min(n, len(x) - 1) + 1)]
        y.append(functools.reduce(jnp.add, terms) * (inv / n) if terms else jnp.zeros_like(y0))
    return y


def _poly_product(u, v, k):
    """Coefficients 0..k of u(t)·v(t), both lists."""
    return [_conv(u, v, n) if n < len(u) + len(v) - 1 else jnp.zeros_like(u[0] * v[0])
            for n in range(k + 1)]


def _poly_power(x, m, k):
    """Coefficients 0..k of x(t)^m, m >= 1, by squaring (exact at x0 = 0, unlike x y' = m y x')."""
    result, base = None, x
    while m:
        if m & 1:
            result = base if result is None else _poly_product(result, base, k)
        m >>= 1
        if m:
            base = _poly_product(base, base, k)
    return result


def _literal_exponent(eqn):
    """The exponent of a `pow` when it is a literal of the jaxpr, else None."""
    e = eqn.invars[1]
    return float(e.val) if isinstance(e, jcore.Literal) and np.ndim(e.val) == 0 else None


_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)


def _smooth_lists(name, exponent, y0, x, k):
    """(y, g): coefficients 0..k of f(x(t)) and f'(x(t)), given y0 = f(x0) and x's list."""
    zero = jnp.zeros_like(y0)
    pad = lambda u: u + [zero] * (k + 1 - len(u))
    dx = _derivative(x)
    integral = lambda g: [y0] + [_chain(dx, g, n) for n in range(1, k + 1)]  # y = ∫ g x' dt
    if name == "exp":
        y = _exp_list(y0, dx, k)
        return y, y
    if name == "expm1":
        e = _exp_list(jnp.exp(x[0]), dx, k)
        return [y0] + e[1:], e
    if name == "reciprocal":
        r = _reciprocal_list(x, k)
        return r, [-v for v in _poly_product(r, r, k)]
    if name in ("log", "log1p"):
        r = _reciprocal_list([x[0] if name == "log" else 1 + x[0]] + x[1:], k)
        return integral(r), r
    if name in ("tanh", "logistic"):
        # tanh' = 1 - tanh², logistic' = logistic - logistic²: g follows y coefficient by coefficient.
        y, g = [y0], [1 - y0 * y0 if name == "tanh" else y0 - y0 * y0]
        for n in range(1, k + 1):
            y.append(_chain(dx, g, n))
            g.append(-_square_at(y, n) if name == "tanh" else y[n] - _square_at(y, n))
        return y, g
    if name in ("erf", "erfc"):
        # erf' = (2/√π) exp(-x²): the exp of the series -x(t)², then y = ∫ erf'(x(t)) x'(t) dt.
        s = [-v for v in _poly_product(x, x, k)]
        c = _TWO_OVER_SQRT_PI if name == "erf" else -_TWO_OVER_SQRT_PI
        g = [c * v for v in _exp_list(jnp.exp(s[0]), _derivative(s), k)]
        return integral(g), g
    if name in ("sin", "cos", "sinh", "cosh"):
        # (sin, cos)' = (cos, -sin) x' and (sinh, cosh)' = (cosh, sinh) x', advanced together.
        sign = -1 if name in ("sin", "cos") else 1
        a = [y0 if name in ("sin", "sinh") else (jnp.sin if name == "cos" else jnp.sinh)(x[0])]
        b = [y0 if name in ("cos", "cosh") else (jnp.cos if name == "sin" else jnp.cosh)(x[0])]
        for n in range(1, k + 1):
            a_n, b_n = _chain(dx, b, n), sign * _chain(dx, a, n)
            a.append(a_n)
            b.append(b_n)
        return (a, b) if name in ("sin", "sinh") else (b, [sign * v for v in a])
    if name == "square":
        return pad([y0] + [_square_at(x, n) for n in range(1, min(k, 2 * len(x) - 2) + 1)]), \
            pad([2 * v for v in x])
    c = exponent if name in ("pow", "integer_pow") else {"sqrt": 0.5, "rsqrt": -0.5}[name]
    if float(c).is_integer():
        return _integer_power(x, int(c), y0, k)
    # x^c and c·x^(c-1) by one recurrence each (smooth only where x0 > 0).
    z = _power_list(x, c - 1, y0 / x[0], k)
    return _power_list(x, c, y0, k), [c * v for v in z]


def _integer_power(x, m, y0, k):
    """x^m and m·x^(m-1) for an integer m, by products of series (and 1/x for m < 0)."""
    zero = jnp.zeros_like(y0)
    pad = lambda u: (u + [zero] * (k + 1 - len(u)))[: k + 1]
    if m == 0:
        return pad([y0]), pad([])
    base = x if m > 0 else _reciprocal_list(x, k)
    lower = _poly_power(base, abs(m) - 1, k) if abs(m) > 1 else None
    y = base if lower is None else _poly_product(lower, base, k)
    if m > 0:  # m x^(m-1)
        g = [m * v for v in lower] if lower is not None else [jnp.full_like(y0, m)]
    else:  # m x^(m-1) = m r^(|m|+1)
        g = [m * v for v in _poly_product(y, base, k)]
    return pad([y0] + y[1:]), pad(g)


def _apply_series(g, dxs, k):
    """Coefficients 1..k of g(t)·δx(t) for δx with no constant term: Σ_m g_{n-m} δx_m.

    Sums of coefficient products, split with `unstack` and joined with `stack`, whose
    transposes are each other: the backward pass is one fused elementwise loop too. (Indexing
    would transpose to one full-size pad per coefficient; a reduction over the stacked axis
    to the CPU's slow reduce kernel.)
    """
    gs, dx = jnp.unstack(g[:k]), jnp.unstack(dxs)
    return jnp.stack([_conv(dx, gs, n) for n in range(k)])


def _smooth(eqn, x, order):
    """f(x(t)) for one smooth unary primitive (operands past the first are constants)."""
    name = eqn.primitive.name
    rest = [v.val if isinstance(v, jcore.Literal) else v for v in eqn.invars[1:]]
    exponent = eqn.params["y"] if name == "integer_pow" else (
        _literal_exponent(eqn) if name == "pow" else None)
    return _smooth_series(name, exponent, lambda x0: _bind(eqn, [x0] + rest)[0], x, order)


def _smooth_series(name, exponent, f0, x, order):
    """y(t) = f(x(t)), f0 its primal; the JVP δy(t) = f'(x(t)) δx(t) is one product of series.

    So reverse mode never differentiates the recurrence: the backward pass of a smooth
    primitive is one batched multiply-and-sum with the stored coefficients of f'(x(t)).
    """

    def lists(x0, xs):
        y, g = _smooth_lists(name, exponent, f0(x0), [x0, *jnp.unstack(xs)], order)
        return y[0], jnp.stack(y[1:]), jnp.stack(g)

    @jax.custom_jvp
    def series(x0, xs):
        y0, ys, _ = lists(x0, xs)
        return y0, ys

    def jvp(primals, tangents):
        y0, ys, g = lists(*primals)
        dx0, dxs = tangents
        dys = jnp.zeros_like(ys)
        if not isinstance(dxs, SymbolicZero):
            dys = _apply_series(g, dxs, order)
        dy0 = jnp.zeros_like(y0)
        if not isinstance(dx0, SymbolicZero):  # a moving expansion point: g(t)·δx0
            dy0 = g[0] * dx0
            dys = dys + g[1:] * dx0[None]
        return (y0, ys), (dy0, dys)

    series.defjvp(jvp, symbolic_zeros=True)
    return _Series(*series(x.x0, x.xs))


def _divide(eqn, a, b, order):
    """a / b with b a series: a · (1/b), the reciprocal a smooth unary series of b."""
    r = _smooth_series("reciprocal", None, lambda b0: 1 / b0, b, order)
    if not isinstance(a, _Series):
        return _Series(jnp.multiply(a, r.x0), jnp.multiply(a, r.xs))
    return _product(jnp.multiply, a, r, order, elementwise=True)


def _nested(eqn, invals, order):
    """Any primitive: derivatives of t ↦ prim(x(t)) at t = 0 by nested JVPs."""

    def at(t):
        vals = []
        for v in invals:
            if isinstance(v, _Series):
                # Horner form: no powers of t, whose derivatives at t = 0 are 0/0 in some rules.
                acc = v.xs[-1]
                for n in range(v.degree - 2, -1, -1):
                    acc = v.xs[n] + t * acc
                vals.append(v.x0 + t * acc)
            else:
                vals.append(v)
        return tuple(_bind(eqn, vals))

    def derivatives(n):
        if n == 0:
            return lambda t: (at(t),)
        lower = derivatives(n - 1)

        def with_next(t):
            primals, tangents = jax.jvp(lower, (t,), (jnp.ones_like(t),))
            return tuple(primals) + (tangents[-1],)

        return with_next

    dtype = next(v.xs.dtype for v in invals if isinstance(v, _Series))
    terms = derivatives(order)(jnp.zeros((), dtype))
    outs = []
    for k, y0 in enumerate(terms[0]):
        if not _is_float(y0):
            outs.append(y0)
            continue
        xs = jnp.stack([terms[n][k] / math.factorial(n) for n in range(1, order + 1)])
        outs.append(_Series(y0, xs))
    return outs


# ---------------------------------------------------------------------------
# Demand-driven truncation: which partial sums each value must supply.

_ALL = "all"          # every coefficient (a smooth primitive, or a product of two series)
_NONE = frozenset()   # the primal only


def _rule(eqn, degrees) -> str:
    """How one equation maps series, given the degrees of its operands (mirrors `_apply`)."""
    if not any(degrees):
        return "const"
    name = eqn.primitive.name
    if not any(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in eqn.outvars) or name in _FLAT:
        return "flat"
    if name in _CALLS:
        return "call"
    if name == "custom_jvp_call" and _is_relu(eqn):
        return "relu"
    if name in _LINEAR or (name == "div" and degrees[1] == 0):
        return "linear"
    if name in _BILINEAR:
        return "linear" if min(degrees[:2]) == 0 else "bilinear"
    if name in ("max", "min"):
        return "extreme"
    return "series"


def _degrees(jaxpr, in_degrees, order):
    """Forward: each value's degree as a series in t (at most `order`), and each equation's rule."""
    degree = dict(zip(jaxpr.invars, in_degrees))
    read = lambda v: 0 if isinstance(v, jcore.Literal) else degree.get(v, 0)
    rules = []
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        rule = _rule(eqn, ins)
        if rule == "call":
            sub, _ = _sub_jaxpr(eqn)
            sub_degree, _ = _degrees(sub, ins, order)
            outs = [0 if isinstance(v, jcore.Literal) else sub_degree.get(v, 0)
                    for v in sub.outvars]
        else:
            d = {"const": 0, "flat": 0, "relu": ins[0], "linear": max(ins), "extreme": max(ins),
                 "bilinear": min(order, sum(ins[:2])), "series": order}[rule]
            outs = [d if jnp.issubdtype(v.aval.dtype, jnp.inexact) else 0 for v in eqn.outvars]
        degree.update(zip(eqn.outvars, outs))
        rules.append(rule)
    return degree, rules


def _demands(jaxpr, degree, rules, out_demands, order):
    """Backward: the partial sums (or _ALL coefficients) each value must supply its users.

    Between bilinear layers everything is linear in the coefficients given the primal, so
    S_j(y) needs only S_j of the operands; a bilinear layer y = B(a, b) with b of degree d
    needs S_{j-l}(a) for l = 0..d and b's coefficients; anything else needs every coefficient.
    Indices past a value's degree are clipped to it (S_j = S_degree there).
    """
    demand: dict = {}

    def want(v, dem):
        d = 0 if isinstance(v, jcore.Literal) else degree.get(v, 0)
        if d == 0 or not dem or demand.get(v) is _ALL:
            return
        if dem is _ALL:
            demand[v] = _ALL
        else:
            demand[v] = demand.get(v, _NONE) | {min(j, d) for j in dem}

    for v, dem in zip(jaxpr.outvars, out_demands):
        want(v, dem)
    for eqn, rule in zip(reversed(jaxpr.eqns), reversed(rules)):
        wanted = [demand.get(v, _NONE) for v in eqn.outvars]
        if rule in ("const", "flat") or not any(wanted):
            continue
        if rule == "call":
            sub, _ = _sub_jaxpr(eqn)
            ins = [0 if isinstance(v, jcore.Literal) else degree.get(v, 0) for v in eqn.invars]
            sub_degree, sub_rules = _degrees(sub, ins, order)
            sub_demand = _demands(sub, sub_degree, sub_rules, wanted, order)
            for v, inner in zip(eqn.invars, sub.invars):
                want(v, sub_demand.get(inner, _NONE))
            continue
        dem = _ALL if any(w is _ALL for w in wanted) else frozenset().union(*wanted)
        if rule == "bilinear" and dem is not _ALL:
            (hi, _), (lo, dlo), _ = _factors(eqn.invars[:2], [degree.get(v, 0) for v in eqn.invars[:2]])
            want(lo, _ALL)
            want(hi, {j - l for j in dem for l in range(min(dlo, j) + 1) if j - l >= 1})
        elif rule == "series":
            for v in eqn.invars:
                want(v, _ALL)
        else:
            for v in eqn.invars:
                want(v, dem)
    return demand


def _factors(operands, degrees):
    """((higher-degree factor, degree), (lower-degree factor, degree), whether b is the higher)."""
    (a, b), (da, db) = operands, degrees
    return ((b, db), (a, da), True) if db > da else ((a, da), (b, db), False)


def _linear_sums(eqn, invals, wanted, degree):
    """S_j(y) = L(S_j(x), constants): a linear map commutes with partial sums."""
    y0 = _bind(eqn, [_primal(v) for v in invals])
    if not wanted:
        return [_Sums(p, (), None, degree) if _is_float(p) else p for p in y0]
    args = [_sum_stack(v, wanted) if _has_series(v) else v for v in invals]
    axes = [0 if _has_series(v) else None for v in invals]
    ys = jax.vmap(lambda *a: _bind(eqn, a), in_axes=axes)(*args)
    return [_Sums(p, wanted, c, degree) if _is_float(p) else p for p, c in zip(y0, ys)]


def _relu_sums(eqn, invals, wanted, degree):
    """ReLU gated at the expansion point: S_j(y) = 1[x0 > 0] · S_j(x)."""
    x = invals[0]
    y0 = _bind(eqn, [x.x0])[0]
    if not wanted:
        return [_Sums(y0, (), None, degree)]
    return [_Sums(y0, wanted, jnp.where(x.x0 > 0, _sum_stack(x, wanted), 0), degree)]


def _extreme_sums(eqn, invals, wanted, degree):
    """max/min follow the operand chosen at the expansion point (ties average, as JAX's JVP)."""
    a, b = invals
    a0, b0 = _primal(a), _primal(b)
    y0 = _bind(eqn, [a0, b0])[0]
    if not wanted:
        return [_Sums(y0, (), None, degree)]
    wa = jnp.where(a0 == y0, jnp.where(b0 == y0, 0.5, 1.0), 0.0).astype(y0.dtype)
    total = jnp.broadcast_to(y0, (len(wanted),) + y0.shape)
    for v, v0, w in ((a, a0, wa), (b, b0, 1 - wa)):
        if _has_series(v):
            total = total + w * (_sum_stack(v, wanted) - v0)
    return [_Sums(y0, wanted, total, degree)]


def _bilinear_sums(eqn, invals, wanted, degree):
    """S_j(y) = Σ_{l ≤ d} B(S_{j-l}(a), b_l) for the lower-degree factor b of y = B(a, b).

    One batched call per coefficient of b, over the distinct partial sums of a it needs. A
    factor of degree 1 (a weight, W0 + ΔW) takes the cheaper plan of `_weight_plan`.
    """
    (hi, dhi), (lo, dlo), swap = _factors(invals[:2], [_degree(v) for v in invals[:2]])

    def call(h, lcoef):
        return _bind(eqn, (lcoef, h) if swap else (h, lcoef))[0]

    y0 = call(_primal(hi), _primal(lo))
    if not wanted:
        return [_Sums(y0, (), None, degree)]
    if dlo == 1:
        return [_Sums(y0, wanted, _weight_sums(call, hi, dhi, lo, y0, wanted), degree)]
    pieces = {}
    for l in range(min(dlo, max(wanted)) + 1):
        need = sorted({min(j - l, dhi) for j in wanted if j - l >= 0} - ({0} if l == 0 else set()))
        if not need:
            continue
        coef = _primal(lo) if l == 0 else lo.xs[l - 1]
        rows = jax.vmap(lambda h, c=coef: call(h, c))(_sum_stack(hi, need))
        pieces.update({(l, i): rows[n] for n, i in enumerate(need)})
    pieces[(0, 0)] = y0
    sums = [sum(pieces[(l, min(j - l, dhi))] for l in range(min(dlo, j) + 1)) for j in wanted]
    return [_Sums(y0, wanted, jnp.stack(sums), degree)]


# Three exact ways to write S_j(y) for y = B(a, W) with W = W0 + ΔW: as terms (sign, weight,
# operand), weight "W0", "dW" or "W" (= W0 + ΔW), operand ("S", m), the partial sum S_m(a), or
# ("c", m), its coefficient a_m = S_m(a) - S_{m-1}(a).
def _weight_forms(j):
    return (((1, "W0", ("S", j)), (1, "dW", ("S", j - 1))),
            ((1, "W", ("S", j)), (-1, "dW", ("c", j))),
            ((1, "W", ("S", j - 1)), (1, "W0", ("c", j))))


@functools.lru_cache(maxsize=None)
def _weight_plan(wanted: tuple[int, ...], dhi: int):
    """The cheapest choice of form per wanted sum, counted in passes of the layer.

    A call costs its forward pass, plus a weight-gradient pass unless the weight is W0, plus
    an input-gradient pass unless its operand is the primal a_0; B(a_0, W0) is the primal
    output, computed anyway. Calls shared between sums are paid once: two consecutive sums
    S_{j+1}, S_j share B(S_j(a), W) and cost 8 passes instead of 10, and a sum past the
    input's degree is the single call B(S_d(a), W).
    Returns (calls, terms): the distinct (weight, operand) calls and, per wanted sum, its
    (sign, index into calls) terms.
    """

    def normal(term):
        sign, weight, (kind, m) = term
        if kind == "c" and m > dhi:
            return None  # a coefficient past the degree is zero
        if kind == "S" or m == 0:
            return sign, weight, ("S", min(m, dhi))
        return term

    def cost(c):
        weight, operand = c
        if c == ("W0", ("S", 0)):
            return 0
        return 1 + (weight != "W0") + (operand != ("S", 0))

    best = None
    for choice in itertools.product(*(_weight_forms(j) for j in wanted)):
        terms = [[t for t in map(normal, form) if t is not None] for form in choice]
        calls = list(dict.fromkeys((w, o) for form in terms for _, w, o in form))
        total = sum(map(cost, calls))
        if best is None or total < best[0]:
            best = total, calls, terms
    _, calls, terms = best
    return tuple(calls), tuple(tuple((sign, calls.index((w, o))) for sign, w, o in form)
                               for form in terms)


def _weight_sums(call, hi, dhi, lo, y0, wanted):
    """The wanted partial sums of B(a, W0 + ΔW) from `_weight_plan`'s batched calls."""
    calls, terms = _weight_plan(wanted, dhi)
    sums_of_a = sorted({m for _, (kind, m) in calls for m in ((m, m - 1) if kind == "c" else (m,))})
    stacked = _sum_stack(hi, sums_of_a)
    partial = {m: stacked[n] for n, m in enumerate(sums_of_a)}
    operand = lambda kind, m: partial[m] if kind == "S" else partial[m] - partial[m - 1]
    weights = {"W0": _primal(lo), "dW": lo.xs[0], "W": _primal(lo) + lo.xs[0]}
    results = {}
    for weight in ("W0", "dW", "W"):
        mine = [n for n, c in enumerate(calls) if c[0] == weight and c != ("W0", ("S", 0))]
        if mine:
            rows = jax.vmap(lambda h: call(h, weights[weight]))(
                jnp.stack([operand(*calls[n][1]) for n in mine]))
            results.update({n: rows[i] for i, n in enumerate(mine)})
    results.update({n: y0 for n, c in enumerate(calls) if c == ("W0", ("S", 0))})
    return jnp.stack([sum(sign * results[n] for sign, n in form) for form in terms])


_SUM_RULES = {"linear": _linear_sums, "relu": _relu_sums, "extreme": _extreme_sums,
              "bilinear": _bilinear_sums}


def truncation_plan(apply_fn: Callable, params0: Any, order: int, *args) -> list[dict]:
    """Each bilinear layer of the order-k Taylor model, in call order: what Taylor mode computes.

    Per layer: `layer` (its scope), `input_degree`, `sums` (the partial sums of its output it
    supplies, or "all" coefficients), `passes` (forward plus gradient passes of its training
    step, the primal included, by the cost model of `_weight_plan`; None where not a weight
    layer) and `flops` (one forward pass). The count in the README's Speed section.
    """
    _check_order(order)
    closed = jax.make_jaxpr(lambda p: apply_fn(p, *args))(params0)
    rows: list[dict] = []
    _walk(closed.jaxpr, [1 if order else 0] * len(closed.jaxpr.invars),
          [frozenset({order})] * len(closed.jaxpr.outvars), order, rows)
    for n, row in enumerate(rows):  # the primal feeds a gate except at the top
        row["passes"] = None if row["passes"] is None else row["passes"] + (n < len(rows) - 1)
    return rows


def _walk(jaxpr, in_degrees, out_demands, order, rows):
    degrees, rules = _degrees(jaxpr, in_degrees, order)
    demand = _demands(jaxpr, degrees, rules, out_demands, order)
    for eqn, rule in zip(jaxpr.eqns, rules):
        wanted = [demand.get(v, _NONE) for v in eqn.outvars]
        ins = [0 if isinstance(v, jcore.Literal) else degrees.get(v, 0) for v in eqn.invars]
        if rule == "call":
            sub, _ = _sub_jaxpr(eqn)
            _walk(sub, ins, wanted, order, rows)
            continue
        if eqn.primitive.name not in ("conv_general_dilated", "dot_general") or rule == "const":
            continue
        out, w = eqn.outvars[0].aval, eqn.invars[1].aval
        flops = 2 * math.prod(out.shape) * math.prod(w.shape) // w.shape[-1]
        # Layers call B(activation, weight): the activation's degree is the input's.
        din, dw = ins[:2]
        sums = "all" if wanted[0] is _ALL else tuple(sorted(wanted[0]))
        if sums == "all" or dw != 1:
            passes = None
        elif din == 0:  # B(x, W) on data: each wanted sum is B(x, W), its forward and weight pass
            passes = 2 * bool(sums)
        else:
            calls, _ = _weight_plan(sums, din)
            passes = sum(0 if c == ("W0", ("S", 0)) else 1 + (c[0] != "W0") + (c[1] != ("S", 0))
                         for c in calls)
        rows.append({"layer": str(eqn.source_info.name_stack), "input_degree": din,
                     "sums": sums, "passes": passes, "flops": flops})


CALL_PRIMITIVES = frozenset(_CALLS)  # primitives whose sub-jaxpr is evaluated as a call


def is_relu(eqn) -> bool:
    """Whether a `custom_jvp_call` equation of a jaxpr is `jax.nn.relu`."""
    return _is_relu(eqn)
