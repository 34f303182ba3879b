"""A network as the engine needs it, whatever it was written in: `init(key, image_shape) ->
params` and `apply(params, x) -> logits`, with its parameters grouped by layer.

Three ways a JAX researcher writes a network, one shape for the engine:

* a flax linen Module (`init`/`apply` with a "params" collection);
* a flax nnx Module class (constructed with `rngs`, split into its parameters and the rest);
* a stax-style pair `(init_fn, apply_fn)`, as `jax.example_libraries.stax` and
  neural-tangents' `stax` build them (`init_fn(rng, input_shape) -> (output_shape, params)`).

A Taylor expansion is a function of the parameters alone, so a network that keeps other state
(batch statistics) or draws random numbers when applied (dropout) is refused, in one line
worded for its kind (`inspect`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ..errors import ModelError


@dataclass(frozen=True)
class Network:
    """`init(key, image_shape) -> params` and `apply(params, x) -> logits` of one network."""

    init: Callable[[jax.Array, tuple], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    kind: str  # "linen", "nnx" or "stax"
    label: str  # what the recipe called it, for messages
    module: Any = field(default=None, compare=False)  # the linen module, when it is one
    # the kinds of variables it keeps besides its parameters (nnx: BatchStat, RngState, ...)
    other_state: Callable[[], list[str]] = field(default=lambda: [], compare=False)

    def abstract_params(self, image_shape) -> Any:
        """Parameter shapes and dtypes, computing nothing."""
        return jax.eval_shape(lambda k: self.init(k, tuple(image_shape)), jax.random.key(0))


def linen_network(module, label: str = "model") -> Network:
    """A flax linen module as a Network (its "params" collection)."""

    def init(key, image_shape):
        return module.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]

    def apply(params, x):
        return module.apply({"params": params}, x)

    return Network(init, apply, "linen", label, module)


def nnx_network(make: Callable[[Any], Any], label: str) -> Network:
    """A flax nnx module as a Network: `make(rngs)` builds it; its nnx.Param variables are the
    parameters (a plain nested dict), anything else it holds is refused by `inspect`."""
    from flax import nnx

    def split(key):
        model = make(nnx.Rngs(params=key, default=key))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return graphdef, params, rest

    shapes: dict = {}

    def structure():
        # The graph and the non-parameter variables of the module, known from an abstract
        # construction once (no arrays allocated).
        if not shapes:
            graphdef, params, rest = nnx.eval_shape(lambda: split(jax.random.key(0)))
            shapes.update(graphdef=graphdef, params=params, rest=rest)
        return shapes

    def init(key, image_shape):
        _, params, _ = split(key)
        return nnx.to_pure_dict(params)

    def apply(params, x):
        s = structure()
        state = jax.tree.map(lambda a: a, s["params"])
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(s["graphdef"], state, s["rest"])(x)

    def rest_kinds() -> list[str]:
        return sorted({type(v).__name__ for v in jax.tree.leaves(
            structure()["rest"], is_leaf=lambda v: isinstance(v, nnx.Variable))})

    return Network(init, apply, "nnx", label, other_state=rest_kinds)


def stax_network(pair, label: str) -> Network:
    """A stax-style `(init_fn, apply_fn[, ...])` as a Network; a parameter list becomes a dict
    {layer00: ..., layer01: ...} of the layers that have parameters, in order."""
    init_fn, apply_fn = pair[0], pair[1]
    layout: dict = {}  # how init_fn's list looked: its type, length and parameterless entries

    def name(i: int) -> str:
        return f"layer{i:0{layout['width']}d}"

    def init(key, image_shape):
        _, params = init_fn(key, (-1, *image_shape))
        if not isinstance(params, (list, tuple)):
            layout.clear()
            return {"layer00": params}
        has = [bool(jax.tree.leaves(p)) for p in params]
        layout.update(kind=type(params), width=max(2, len(str(len(params)))),
                      fixed={i: p for i, p in enumerate(params) if not has[i]},
                      length=len(params))
        return {name(i): p for i, p in enumerate(params) if has[i]}

    def apply(params, x):
        if not layout:
            return apply_fn(params["layer00"], x)
        full = [layout["fixed"][i] if i in layout["fixed"] else params[name(i)]
                for i in range(layout["length"])]
        return apply_fn(layout["kind"](full), x)

    return Network(init, apply, "stax", label)


def inspect(net: Network, image_shape, num_classes: int) -> list[str]:
    """Check that a network is one a Taylor expansion can follow; its layers, input to output.

    Traced abstractly (nothing is computed): it must need no randomness besides its
    initialization (no dropout), keep no state besides its parameters (no batch-norm
    statistics), compute no empty array (inputs too small for it), and return logits of shape
    (batch, num_classes). The layers are its top-level parameter groups in call order: `init`
    returns them in that order, but any JAX transformation of the dict sorts its keys.
    """
    seen: dict = {}
    what = {"linen": "module", "nnx": "nnx module", "stax": "stax network"}[net.kind]

    def trace(key):
        x = jnp.zeros((2, *image_shape), jnp.float32)
        if net.kind == "linen":
            variables = net.module.init({"params": key}, x)
            seen["collections"] = [c for c in variables if c != "params"]
            params = variables.get("params", {})
        else:
            params = net.init(key, tuple(image_shape))
        seen["layers"] = [str(k) for k in params] if isinstance(params, dict) else [""]
        seen["params"] = params
        return net.apply(params, x)

    try:
        if net.kind == "nnx":
            kinds = net.other_state()
            random = [k for k in kinds if "Rng" in k]
            if random:
                raise ModelError(f"key model.arch: {net.label} is an {what} that holds random "
                                 f"state ({', '.join(random)}: dropout?); a Taylorized model "
                                 f"is a fixed function of its parameters, so build it without "
                                 f"rngs kept for dropout (or make dropout deterministic)")
            if kinds:
                raise ModelError(f"key model.arch: {net.label} is an {what} that keeps "
                                 f"{', '.join(kinds)} variables besides its nnx.Param ones "
                                 f"(batch norm statistics?), which a Taylor expansion in the "
                                 f"parameters cannot follow; use a module without them")
        out = jax.eval_shape(trace, jax.random.key(0))
        empty = _empty_values(net, seen["params"], image_shape)
    except ModelError:
        raise
    except SystemExit as e:  # a network must not end taylorcli silently
        raise ModelError(f"key model.arch: {net.label} called sys.exit({e.code!r}) when "
                         f"applied; expected a network that returns logits") from None
    except Exception as e:  # noqa: BLE001 - whatever the user's network raises
        text = " ".join(str(e).split())
        if "rng" in text.lower() or "prng" in text.lower():
            raise ModelError(f"key model.arch: {net.label} is a {what} that draws random "
                             f"numbers when applied (dropout?); a Taylorized model is a fixed "
                             f"function of its parameters, so make it deterministic") from None
        if "mutable" in text.lower() or "batch_stats" in text:
            raise ModelError(f"key model.arch: {net.label} is a {what} that updates state when "
                             f"applied (batch norm statistics?), which a Taylor expansion in "
                             f"the parameters cannot follow; use one without normalization "
                             f"state") from None
        raise ModelError(f"key model.arch: {net.label} fails on inputs of shape "
                         f"(batch, {', '.join(map(str, image_shape))}) "
                         f"({type(e).__name__}: {text[:200]})") from None
    if seen.get("collections"):
        raise ModelError(f"key model.arch: {net.label} keeps state in "
                         f"{', '.join(seen['collections'])} (batch norm statistics?), which a "
                         f"Taylor expansion in the parameters cannot follow; use a module whose "
                         f"only variables are its parameters")
    if not jax.tree.leaves(seen["params"]):
        raise ModelError(f"key model.arch: {net.label} has no parameters")
    if empty:
        raise ModelError(f"key model.arch: {net.label} computes an empty array ({empty}) on "
                         f"inputs of shape ({', '.join(map(str, image_shape))}): the input is "
                         f"too small for it (too many unpadded convolutions or poolings?); pad "
                         f"the data or make the network shallower")
    shape = getattr(out, "shape", None)
    if shape != (2, num_classes):
        raise ModelError(f"key model.arch: {net.label} returns "
                         f"{'shape ' + str(shape) if shape else type(out).__name__} for a batch "
                         f"of 2; expected logits of shape (batch, {num_classes})")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ModelError(f"key model.arch: {net.label} returns {out.dtype} logits; expected "
                         f"floating-point logits (a Taylor expansion differentiates them)")
    return seen["layers"]


def _empty_values(net: Network, params, image_shape) -> str | None:
    """The first value of the network's computation with no elements, as 'shape (…)', or None."""
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    closed = jax.make_jaxpr(net.apply)(params, x)

    def walk(jaxpr) -> str | None:
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                shape = getattr(v.aval, "shape", ())
                if shape and math.prod(shape) == 0:
                    return f"shape {tuple(shape)} after {eqn.primitive.name}"
            for sub in _sub_jaxprs(eqn.params):
                found = walk(sub)
                if found:
                    return found
        return None

    return walk(closed.jaxpr)


def _sub_jaxprs(params: dict):
    """The jaxprs an equation calls (pjit, custom_jvp, scan, cond branches, ...)."""
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(v, "jaxpr", v)
            if hasattr(inner, "eqns"):
                yield inner


def count_params(params) -> int:
    """Number of scalar parameters."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
