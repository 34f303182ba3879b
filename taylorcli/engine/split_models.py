"""Models split across devices (`train.split_models: true`), for models too large to hold together.

Instead of a copy of every model on every device, each local device holds a group of the
models and runs one jitted step for that group. Every group draws the same minibatch with the
same augmentation (both derive from the seed and the step), so each model follows exactly the
trajectory it follows in the lockstep step. The groups' steps are dispatched one after the
other without waiting, so the devices run them at the same time.
"""

from __future__ import annotations

import dataclasses

import jax

from ..errors import RecipeError
from ..names import FULL, order_of
from .evaluation import Evaluator
from .lockstep import make_eval_logits, make_train_step
from .state import PER_MODEL, LockstepState


def model_cost(name: str) -> float:
    """Relative cost of one model's step: 1 for the full network, the Taylor-mode bound 5k/3 else."""
    k = order_of(name)
    return 1.0 if k == 0 else 5 * k / 3


def device_groups(names, n_devices: int) -> list[tuple[str, ...]]:
    """Models per device, balancing the step cost (largest first, onto the least loaded device)."""
    load = [0.0] * n_devices
    groups: list[list[str]] = [[] for _ in range(n_devices)]
    for name in sorted(names, key=model_cost, reverse=True):
        i = min(range(n_devices), key=lambda d: (load[d], d))
        load[i] += model_cost(name)
        groups[i].append(name)
    order = {n: i for i, n in enumerate(names)}
    return [tuple(sorted(g, key=order.get)) for g in groups if g]


@dataclasses.dataclass
class Group:
    """One device and the models it trains, with its own copy of θ0 and its jitted step."""

    names: tuple[str, ...]
    device: jax.Device
    theta0: dict
    step: object
    logits: object


def _group_step(engine, seed: int):
    inner = make_train_step(engine, seed)

    def step(models, count, theta0, perm, train_x, train_y):
        # θ0 and the step counter stay outside the donated argument: every group reads them.
        new, stats = inner(LockstepState(step=count, theta0=theta0, **models), perm, train_x,
                           train_y)
        return {k: getattr(new, k) for k in PER_MODEL}, stats

    return jax.jit(step, donate_argnums=0)


class _PerDevice:
    """Copies of one array on each device, made once per distinct array."""

    def __init__(self):
        self.source, self.copies = None, {}

    def get(self, x, device):
        if x is not self.source:
            self.source, self.copies = x, {}
        if device not in self.copies:
            self.copies[device] = jax.device_put(x, device)
        return self.copies[device]


class SplitStep:
    """`step(state, perm, train_x, train_y) -> (state, stats)` like the lockstep step, one call per group."""

    def __init__(self, groups: list[Group]):
        self.groups = groups
        self.data = {"perm": _PerDevice(), "x": _PerDevice(), "y": _PerDevice()}

    def __call__(self, state, perm, train_x, train_y):
        """Dispatch every group's step (they run concurrently) and gather the models' states."""
        new = {k: {} for k in PER_MODEL}
        stats = {}
        for g in self.groups:
            sub = state.models(g.names)
            models = jax.device_put({k: getattr(sub, k) for k in PER_MODEL}, g.device)
            out, s = g.step(models, jax.device_put(state.step, g.device), g.theta0,
                            self.data["perm"].get(perm, g.device),
                            self.data["x"].get(train_x, g.device),
                            self.data["y"].get(train_y, g.device))
            for k in PER_MODEL:
                new[k] |= out[k]
            stats |= s
        return state.replace(step=state.step + 1, **new), stats


class SplitEvaluator(Evaluator):
    """The evaluator with each group's logits and geometry computed on that group's device.

    cos_param needs the full network beside each model: its parameters are copied to each
    group's device for that (one model more per device, parameters only).
    """

    def __init__(self, base: Evaluator, groups: list[Group]):
        self.__dict__.update(base.__dict__)
        self.groups = groups
        self._geometry_fn = base.geometry
        self.geometry = self._split_geometry
        self._test_x = {g.device: jax.device_put(self.test_x, g.device) for g in groups}

    def logits(self, state):
        """Test-set logits of every model, each on its own device."""
        import numpy as np

        out = {}
        for g in self.groups:
            sub = state.models(g.names).replace(theta0=g.theta0)
            x = self._test_x[g.device]
            parts = [g.logits(sub, x[i:i + self.batch]) for i in range(0, x.shape[0], self.batch)]
            out |= {n: np.concatenate([np.asarray(p[n]) for p in parts])[: self.n]
                    for n in g.names}
        return {n: out[n] for n in self.engine.names}

    def _split_geometry(self, state):
        out = {}
        full = state.params.get(FULL)
        for g in self.groups:
            params = {n: state.params[n] for n in g.names}
            if full is not None and FULL not in params:
                params[FULL] = jax.device_put(full, g.device)
            geometry = self._geometry_fn(state.replace(theta0=g.theta0, params=params))
            out |= {n: geometry[n] for n in g.names}
        return out


def split_models(engine, seed: int, state, evaluator: Evaluator):
    """The step, state and evaluator of a run whose models are spread over the local devices."""
    if jax.process_count() > 1:
        raise RecipeError("key train.split_models: expected false with several processes "
                          "(it places models on one host's devices); got true")
    devices = jax.local_devices()
    groups = []
    for names, device in zip(device_groups(engine.names, len(devices)), devices):
        sub = dataclasses.replace(engine, models=tuple(s for s in engine.models if s.name in names),
                                  batch_sharding=None)
        groups.append(Group(names, device, jax.device_put(state.theta0, device),
                            _group_step(sub, seed), jax.jit(make_eval_logits(sub))))
    for g in groups:
        placed = jax.device_put({k: getattr(state.models(g.names), k) for k in PER_MODEL},
                                g.device)
        state = state.replace(**{k: {**getattr(state, k), **placed[k]} for k in PER_MODEL})
    return SplitStep(groups), state, SplitEvaluator(evaluator, groups)
