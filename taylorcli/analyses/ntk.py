"""Empirical neural tangent kernels and the kernel distance of Fort et al. (2020).

Θ(x, x') = J(x) J(x')ᵀ with J = ∂f(params, x)/∂params, for any `f(params, x) -> (batch, C)`:
the full network or a Taylorized model f_k (then it is f_k's tangent kernel wrt its own params).

Memory: the whole n·C × P Jacobian is never formed. Examples go in blocks of `block`; one block's
Jacobian holds block·C·P floats (CNNTHIN, block 16: 16·10·447,626 floats ≈ 286 MB in float32),
and at most two are alive at once (a row block, kept while its kernel row is filled, and the
column block being contracted against it), so the peak is about 2·block·C·P floats plus the
per-example activations of one block (measured for CNNTHIN at block 16 with XLA's CPU
memory_analysis: 804 MB while a column block is computed, 573 MB while it is contracted). Cost:
every column block's Jacobian is recomputed for each row block, about n1·n2·C/block
single-example backward passes (about half when x2 is None; diagonal blocks reuse the row's).

`f` must treat examples independently (no batch statistics): Jacobians are per example.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ntk", "kernel_distance", "kernel_velocity"]

_OUTPUTS = ("trace", "full")


def ntk(f: Callable, params: Any, x1, x2=None, *, outputs: str = "trace", block: int = 16,
        args: tuple = ()) -> np.ndarray:
    """Empirical NTK of `f` at `params`: (n1, n2) summed over outputs, or (n1·C, n2·C) with row i·C + c.

    `f(params, x, *args)`; `args` (arrays) are traced, not compiled in, and not differentiated.
    """
    if outputs not in _OUTPUTS:
        raise ValueError(f"outputs must be one of {_OUTPUTS}, got {outputs!r}")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    symmetric = x2 is None
    x1 = jnp.asarray(x1)
    x2 = x1 if symmetric else jnp.asarray(x2)
    n1, n2 = x1.shape[0], x2.shape[0]
    b1, b2 = _blocks(x1, block), _blocks(x2, block)

    # One row block's Jacobian stays on the device while the column blocks are swept past it.
    rows = []
    for i, xa in enumerate(b1):
        jac_a = _jacobian(f, params, xa, args)
        start = i if symmetric else 0
        row = [None] * start
        for j, xb in enumerate(b2[start:], start):
            jac_b = jac_a if symmetric and j == i else _jacobian(f, params, xb, args)
            row.append(np.asarray(_contract(outputs, jac_a, jac_b)))
            del jac_b  # frees the column block before the next one is computed
        rows.append(row)
    if symmetric:
        for i in range(len(b1)):
            for j in range(i):
                rows[i][j] = rows[j][i].transpose(2, 3, 0, 1) if outputs == "full" else rows[j][i].T

    axis = 2 if outputs == "full" else 1
    kernel = np.concatenate([np.concatenate(r, axis=axis) for r in rows], axis=0)
    if outputs == "trace":
        return kernel[:n1, :n2]
    c = kernel.shape[1]
    return kernel[:n1, :, :n2, :].reshape(n1 * c, n2 * c)


def _blocks(x, block: int) -> list:
    """`x` cut into equal blocks, the last zero-padded, so one compiled program serves them all."""
    pad = -x.shape[0] % block
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    return [x[s:s + block] for s in range(0, x.shape[0], block)]


@partial(jax.jit, static_argnums=(0,))
def _jacobian(f, params, xb, args):
    """Per-example Jacobians of a block, one (block, C, size) array per parameter leaf."""
    # Per-example reverse mode: block·C backward passes of one example each, not of the whole block.
    single = lambda p, x: f(p, x[None], *args)[0]
    jac = jax.vmap(jax.jacrev(single), in_axes=(None, 0))(params, xb)
    return [j.reshape(j.shape[0], j.shape[1], -1) for j in jax.tree.leaves(jac)]


@partial(jax.jit, static_argnums=(0,))
def _contract(outputs, jac_a, jac_b):
    """Kernel block J_a J_bᵀ, accumulated leaf by leaf."""
    # As plain A·Bᵀ products (contracting the last axis of both), so no operand is transposed
    # into a block-sized temporary. HIGHEST: GPUs would otherwise contract float32 in TF32, and
    # kernel distances compare nearly equal kernels.
    b, c = jac_a[0].shape[:2]
    rows = b if outputs == "trace" else b * c
    out = sum(jax.lax.dot_general(a.reshape(rows, -1), bb.reshape(rows, -1), (((1,), (1,)), ((), ())),
                                  precision=jax.lax.Precision.HIGHEST)
              for a, bb in zip(jac_a, jac_b))
    return out if outputs == "trace" else out.reshape(b, c, b, c)


def kernel_distance(k1, k2) -> float:
    """S = 1 − Tr(K1 K2ᵀ)/√(Tr(K1 K1ᵀ) Tr(K2 K2ᵀ)), in [0, 2] (Fort et al. 2020), in float64."""
    a = np.asarray(k1, np.float64).ravel()
    b = np.asarray(k2, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"kernels differ in shape: {np.shape(k1)} vs {np.shape(k2)}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("kernel distance is undefined for a zero kernel")
    # 1 − cos = ‖a/‖a‖ − b/‖b‖‖²/2 without the cancellation of 1 − cos for nearby kernels.
    return float(np.clip(0.5 * np.sum((a / na - b / nb) ** 2), 0.0, 2.0))


def kernel_velocity(k1, k2, dt: float) -> float:
    """Kernel distance per unit time between kernels `dt` apart."""
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    return kernel_distance(k1, k2) / dt
