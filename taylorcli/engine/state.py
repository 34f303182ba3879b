"""The lockstep state: everything the jitted step reads and writes, with named fields.

One pytree (a flax struct dataclass), per model where it says so. Checkpoints store it as the
dict layout of earlier versions (`as_dict` / `from_dict`), so runs made before this type
existed still resume.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

FIELDS = ("step", "theta0", "params", "opt", "diverged", "stats", "centers")
PER_MODEL = ("params", "opt", "diverged", "stats")


@struct.dataclass
class LockstepState:
    """The network and its Taylorized models at one step.

    `params`, `opt`, `diverged` and `stats` map each model's name to its own value;
    `centers` holds the current expansion point of each re-expanding model (empty otherwise).
    `stats` are per model [Σ minibatch loss, Σ minibatch accuracy, minibatches] since the last
    evaluation, kept here so a checkpoint between evaluations loses nothing.
    """

    step: jax.Array
    theta0: Any
    params: dict[str, Any]
    opt: dict[str, Any]
    diverged: dict[str, jax.Array]
    stats: dict[str, jax.Array]
    centers: dict[str, Any] = struct.field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The models it holds, in lockstep order."""
        return tuple(self.params)

    def center(self, name: str):
        """The point model `name` is expanded around: its own (re-expanding) or θ0."""
        return self.centers.get(name, self.theta0)

    def models(self, names) -> "LockstepState":
        """The same state holding only the models `names` (θ0 and the step shared)."""
        pick = lambda d: {n: d[n] for n in names if n in d}
        return self.replace(params=pick(self.params), opt=pick(self.opt),
                            diverged=pick(self.diverged), stats=pick(self.stats),
                            centers=pick(self.centers))

    def as_dict(self) -> dict:
        """The checkpoint layout: a dict of the fields, `centers` only when there are any."""
        out = {k: getattr(self, k) for k in FIELDS if k != "centers"}
        if self.centers:
            out["centers"] = self.centers
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "LockstepState":
        """The state a checkpoint's dict holds."""
        return cls(**{k: d[k] for k in FIELDS if k != "centers"}, centers=d.get("centers", {}))
