"""The inputs of every ReLU a network computes, read off its jaxpr: the on/off patterns of the
children's ReLU-pattern distance (Fort et al.), for any network, built in or not."""

from __future__ import annotations

from typing import Callable

import jax

def relu_inputs(apply: Callable, params, x) -> list[jax.Array]:
    """The input of every ReLU (`jax.nn.relu`) that `apply(params, x)` computes, batch first.

    Read off the computation itself (its jaxpr), so it works for any module, built in or not.
    """
    from jax.extend import core as jcore

    from ..taylor import CALL_PRIMITIVES, is_relu

    closed = jax.make_jaxpr(apply)(params, x)
    found: list[jax.Array] = []

    def run(jaxpr, consts, args):
        env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
        read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
        for eqn in jaxpr.eqns:
            vals = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name == "custom_jvp_call" and is_relu(eqn):
                found.append(vals[0])
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if name in CALL_PRIMITIVES | {"custom_jvp_call"} and sub is not None:
                inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
                outs = run(inner, sub.consts if isinstance(sub, jcore.ClosedJaxpr) else [], vals)
            else:
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
                outs = outs if eqn.primitive.multiple_results else [outs]
            for var, val in zip(eqn.outvars, outs):
                env[var] = val
        return [read(v) for v in jaxpr.outvars]

    run(closed.jaxpr, closed.consts, jax.tree.leaves((params, x)))
    return [a.reshape(a.shape[0], -1) for a in found]
