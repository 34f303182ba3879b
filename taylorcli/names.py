"""Model, dataset and architecture names: built and parsed here, and nowhere else.

Model names are what metrics.csv, logits/*.npz and every report key on (DESIGN.md):

    full                     the network itself
    order1 … orderK          its Taylorized models
    spawn@E/orderK           a spawned run's model, expanded around θ(E) (Fort et al.)
    spawn@E/orderK/everyM    the same, re-expanded every M steps (Goldwaser & Ge)
    spawn@E/orderK/doublingM re-expanded after M, 2M, 4M, ... steps
    childN                   a copy of the network with its own SGD noise
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FULL = "full"

BUILTIN_DATASETS = ("digits", "cifar10", "cifar100", "synthetic", "npz")
BUILTIN_ARCHS = ("cnn", "wrn", "mlp", "twolayer")

_MODEL = re.compile(r"(?:spawn@(?P<at>[0-9.e+-]+)/)?(?:(?P<full>full)|order(?P<order>\d+)"
                    r"(?:/(?P<kind>every|doubling)(?P<interval>\d+))?|child(?P<child>\d+))")
_TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[a-z0-9_.]+)?(:\d+\.\d+\.\d+)?")
_IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ModelName:
    """A model name taken apart: its Taylor order (0: the network), spawn epoch, re-expansion, child."""

    order: int = 0
    spawn_epoch: float | None = None
    reexpand: tuple[str, int] | None = None  # ("every", M) or ("doubling", M)
    child: int | None = None

    @property
    def text(self) -> str:
        """The name as written in tables and files."""
        if self.child is not None:
            return f"child{self.child}"
        base = FULL if self.order == 0 else f"order{self.order}"
        if self.reexpand is not None:
            base += f"/{self.reexpand[0]}{self.reexpand[1]}"
        return base if self.spawn_epoch is None else f"spawn@{self.spawn_epoch:g}/{base}"

    @property
    def kind(self) -> str:
        """The name without its spawn epoch: `order1`, `order1/every10`, `child0`, `full`."""
        return ModelName(self.order, None, self.reexpand, self.child).text


def order_name(order: int) -> str:
    """`full` for order 0, else `orderK`."""
    return ModelName(order).text


def model_names(orders) -> list[str]:
    """Names of the models trained in lockstep: `full`, then `order1` … `orderK`."""
    return [FULL] + [order_name(k) for k in orders]


def spawned_name(epoch: float, order: int, reexpand: tuple[str, int] | None = None) -> str:
    """`spawn@E/orderK`, or with a re-expansion `spawn@E/orderK/everyM` / `.../doublingM`."""
    return ModelName(order, float(epoch), reexpand).text


def child_name(i: int) -> str:
    """`childN`: a copy of the network trained with its own SGD noise."""
    return ModelName(child=i).text


def parse_model_name(name: str) -> ModelName | None:
    """A model name taken apart, or None when taylorcli writes no such name."""
    m = _MODEL.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        return None
    at = float(m["at"]) if m["at"] is not None else None
    if m["child"] is not None:
        return None if at is not None else ModelName(child=int(m["child"]))
    if m["full"] is not None:
        return None if at is not None else ModelName()
    reexpand = (m["kind"], int(m["interval"])) if m["kind"] else None
    if reexpand is not None and at is None:
        return None
    return ModelName(int(m["order"]), at, reexpand)


def is_model_name(name) -> bool:
    """Whether `name` is one taylorcli writes."""
    return parse_model_name(name) is not None


def order_of(name: str) -> int:
    """Taylor order of a model name: 0 for `full` and `childN`, K for `orderK`, `spawn@E/orderK`, ..."""
    parsed = parse_model_name(name)
    return parsed.order if parsed is not None else 0


def is_child(name: str) -> bool:
    """Whether a model is a child (a copy of the network with its own SGD noise)."""
    parsed = parse_model_name(name)
    return parsed is not None and parsed.child is not None


def model_kind(name: str) -> str:
    """A model's name without its spawn epoch: `order1`, `order1/every10`, `child0`, `full`."""
    parsed = parse_model_name(name)
    return parsed.kind if parsed is not None else name


def is_dataset_name(value: str) -> bool:
    """A built-in dataset, or the shape of a TFDS name (`mnist`, `svhn_cropped:3.0.0`)."""
    return value in BUILTIN_DATASETS or bool(_TFDS_NAME.fullmatch(value))


def is_user_arch(value: str) -> bool:
    """Whether `model.arch` names the user's own model by import path ('pkg.mod:Name')."""
    return value not in BUILTIN_ARCHS and bool(_IMPORT_PATH.fullmatch(value))
