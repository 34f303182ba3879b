"""The recipe: its schema (pydantic), YAML files, `--set` overrides and the bundled recipes.

A recipe is a frozen pydantic model. Each field's type, bounds and choices live in its
annotation, and the one-line errors are written from them ("key optim.lr: expected a number
> 0, got -1"); rules that span fields are model validators. Recipes are read with a safe YAML
loader that constructs no Python objects, refuses duplicate keys, and bounds the size read.
"""

from __future__ import annotations

import difflib
import math
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, \
    ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .errors import RecipeError

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict", "recipe_to_dict",
           "recipe_to_flat", "dump_recipe", "bundled_recipes", "resolve_recipe", "KEYS"]

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes; anything near this is not one
INT32 = 2**31 - 1  # steps and sizes live in int32 arrays on the device


# ---- field types: the constraint is part of the annotation, the error text is read from it ----

class _Sequence:
    """Marks a list field: 'increasing', 'distinct' (kept in order) or 'set' (distinct, sorted)."""

    def __init__(self, kind: str):
        self.kind = kind


class _Says:
    """What a field accepts, in words, where its type alone does not say it."""

    def __init__(self, text: str):
        self.text = text


def _number_from_text(value: Any) -> Any:
    if isinstance(value, str):
        try:  # pyyaml reads `1e-3` as a string, and researchers write it that way
            return float(value)
        except ValueError:
            return value
    return value


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (int, float, str)):  # `decay_epochs: 5` means [5]
        return (value,)
    return value


def _check_sequence(kind: str):
    def check(value: tuple) -> tuple:
        if kind == "increasing" and any(a >= b for a, b in zip(value, value[1:])):
            raise PydanticCustomError("sequence", "not increasing")
        if kind in ("distinct", "set") and len(set(value)) != len(value):
            raise PydanticCustomError("sequence", "not distinct")
        return tuple(sorted(value)) if kind == "set" else value
    return check


def Int(ge: int = 0, le: int = INT32) -> Any:
    """An integer field within [ge, le] (booleans and floats refused)."""
    return Annotated[int, Field(ge=ge, le=le)]


def Num(**bounds) -> Any:
    """A finite number field with bounds (gt/ge/lt/le); integers and '1e-3' text accepted."""
    return Annotated[float, BeforeValidator(_number_from_text), Field(allow_inf_nan=False, **bounds)]


def Seq(item: Any, kind: str | None = None) -> Any:
    """A list field of `item`s (a single value counts as a list of one)."""
    marks: list = [BeforeValidator(_as_tuple)]
    if kind:
        marks += [AfterValidator(_check_sequence(kind)), _Sequence(kind)]
    return Annotated[tuple[item, ...], *marks]


class Section(BaseModel):
    """One recipe section: unknown keys refused, values immutable and strictly typed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ---- the schema ----

BUILTIN_DATASETS = ("digits", "cifar10", "cifar100", "synthetic", "npz")
BUILTIN_ARCHS = ("cnn", "wrn", "mlp")
_TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[a-z0-9_.]+)?(:\d+\.\d+\.\d+)?")
_IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def _dataset_name(value: str) -> str:
    if value in BUILTIN_DATASETS or _TFDS_NAME.fullmatch(value):
        return value
    raise PydanticCustomError("value", "expected digits, cifar10, cifar100, synthetic, npz, or "
                              "the name of a TFDS image-classification dataset (mnist, "
                              "svhn_cropped, fashion_mnist, ...)")


def _arch_name(value: str) -> str:
    if value in BUILTIN_ARCHS or _IMPORT_PATH.fullmatch(value):
        return value
    raise PydanticCustomError("value", "expected one of cnn, wrn, mlp, or a flax module by "
                              "import path, 'package.module:ClassName'")


def _plain_value(value: Any, where: str = "") -> Any:
    """YAML-plain values only (numbers, strings, booleans, null, lists, mappings of them)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise PydanticCustomError("value", "expected string keys")
            _plain_value(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _plain_value(v)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise PydanticCustomError("value", "expected plain YAML values (numbers, strings, "
                                  "lists, mappings)")
    return value


class DataConfig(Section):
    """Which dataset to load and how to augment it."""
    # digits, cifar10, cifar100, synthetic; npz (data.path); or any TFDS image-classification
    # dataset by name (mnist, svhn_cropped, ...), read from data.data_dir
    dataset: Annotated[str, AfterValidator(_dataset_name), _Says(
        "one of digits, cifar10, cifar100, synthetic, npz, or a TFDS dataset name")] = "cifar10"
    data_dir: Optional[str] = None  # TFDS data_dir
    archive: Optional[str] = None  # local CIFAR python archive (.tar.gz) or extracted folder
    path: Optional[str] = None  # dataset npz: a .npz of x_train, y_train, x_test, y_test
    # per-channel mean and standard deviation of the [0, 1] pixels; null: computed on the
    # training set (CIFAR: the usual constants) and written into the run's recipe.yaml
    mean: Optional[Seq(Num())] = None
    std: Optional[Seq(Num(gt=0))] = None
    train_limit: Optional[Int(1)] = None
    test_limit: Optional[Int(1)] = None
    synthetic_train: Int(1, 10**7) = 512
    synthetic_test: Int(1, 10**7) = 256
    pad: Int(0, 1024) = 4
    flip: bool = True
    # per_batch: one random crop offset per batch, as the authors' code (tf.image.random_crop
    # on the whole 4-D batch); flips stay per image either way
    crop: Literal["per_image", "per_batch"] = "per_image"


class ModelConfig(Section):
    """Network architecture and parameterization."""
    # cnn, wrn, mlp, or your own flax module by import path 'package.module:ClassName'
    arch: Annotated[str, AfterValidator(_arch_name), _Says(
        "one of cnn, wrn, mlp, or an import path 'package.module:ClassName'")] = "cnn"
    # your module's constructor arguments (num_classes is filled in from the data if the
    # module has such a field and kwargs does not set it)
    kwargs: Annotated[dict[str, Any], AfterValidator(_plain_value)] = {}
    # the folder your module is imported from (besides the working directory): by default the
    # recipe file's own folder, recorded here so resumes and spawns find it again
    module_path: Optional[str] = None
    depth: Int(1, 10_000) = 4  # wrn additionally needs 6n+4, checked across fields
    width: Int(1, 1 << 20) = 128  # cnn: channels; wrn: first conv channels; mlp: hidden units
    widen: Int(1, 1 << 10) = 4  # wrn widening factor k
    activation: Literal["relu", "tanh", "gelu", "softplus"] = "relu"
    parameterization: Literal["standard", "ntk"] = "standard"
    # sigma_w and sigma_b of the ntk parameterization (standard deviations, not variances); the
    # defaults are Lee et al.'s sigma_w^2 = 2, sigma_b^2 = 0.1
    w_std: Num(gt=0) = math.sqrt(2.0)
    b_std: Num(ge=0) = math.sqrt(0.1)


class TaylorConfig(Section):
    """Which Taylorized models to train alongside the network (empty: network only)."""
    orders: Seq(Int(1, 32), "set") = (1, 2, 3, 4)


class TrainConfig(Section):
    """Training length, batch size and loss."""
    epochs: Int(1, 10**6) = 10
    batch_size: Int(1, 1 << 20) = 128
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    split_models: bool = False  # each model (group) on its own local device, not replicated on all
    # where compiled programs are kept between runs (JAX's persistent cache), so a resumed,
    # requeued or repeated run does not compile again: null for ~/.cache/taylorcli/jax (or
    # $TAYLORCLI_COMPILE_CACHE), "off" for none; a shared folder serves a whole job array
    compile_cache: Optional[str] = None
    # keep: also train on each epoch's last partial batch, as the authors' code (196 steps per
    # epoch at batch 256 on CIFAR-10's 50,000 images; drop gives 195)
    last_batch: Literal["drop", "keep"] = "drop"
    # float64: every model, optimizer state and metric in double precision (JAX's x64 mode,
    # switched on for the run only), for differences far below float32's resolution
    precision: Literal["float32", "float64"] = "float32"

    @field_validator("compile_cache", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML reads a bare `off`/`no`/`false` as False and `on`/`yes`/`true` as True.
        return ("off" if value is False else None) if isinstance(value, bool) else value


class OptimConfig(Section):
    """The optimizer (optax) shared by the network and every Taylorized model, each its own copy."""
    name: Literal["sgd", "adam"] = "sgd"
    lr: Num(gt=0) = 0.1  # the peak learning rate of the schedule
    momentum: Num(ge=0, lt=1) = 0.0  # sgd
    nesterov: bool = False  # sgd
    b1: Num(ge=0, lt=1) = 0.9  # adam
    b2: Num(ge=0, lt=1) = 0.999  # adam
    eps: Num(gt=0) = 1e-8  # adam
    weight_decay: Num(ge=0) = 0.0  # added to the gradient (L2), before the optimizer
    grad_clip: Optional[Num(gt=0)] = None  # global-norm clipping, per model
    # constant; step (x decay_factor at decay_epochs); cosine (to final_lr_factor x lr at
    # the end); warmup_cosine (linear from 0 over warmup_epochs, then cosine)
    schedule: Literal["constant", "step", "cosine", "warmup_cosine"] = "step"
    decay_epochs: Seq(Int(1, 10**6), "increasing") = ()  # must also be < train.epochs
    decay_factor: Num(gt=0, le=1) = 0.1
    warmup_epochs: Int(0, 10**6) = 0
    final_lr_factor: Num(ge=0, le=1) = 0.0


class EvalConfig(Section):
    """When and how to evaluate."""
    every_epochs: Int(1, 10**6) = 1
    steps: Seq(Int(1), "increasing") = ()  # extra early evaluations, in optimizer steps
    batch_size: Int(1, 1 << 20) = 1000
    save_logits: bool = True
    kernel_n: Int(0, 10**6) = 0  # empirical NTK of every model on this many training examples
    kernel_outputs: Literal["trace", "full"] = "trace"  # sum over logits (n x n), or n·C x n·C
    kernel_block: Int(1, 1 << 16) = 16  # examples per Jacobian block: memory ~ block·C·params
    closed_form: bool = False  # Lee et al.: every model against the linearized MSE closed form


class CheckpointConfig(Section):
    """When to checkpoint and which checkpoints to keep."""
    every_epochs: Int(1, 10**6) = 1
    every_steps: Optional[Int(1)] = None  # also checkpoint every N optimizer steps
    keep: Int(1, 10**6) = 2  # newest checkpoints kept
    keep_epochs: Seq(Int(0, 10**6), "increasing") = ()  # kept for spawning, never deleted


class SpawnConfig(Section):
    """Where a spawned run starts: a parent run's full network at an epoch (`taylorcli spawn`)."""
    parent: Optional[str] = None  # the parent's run directory; null for an ordinary run
    epoch: Num(ge=0, le=10**6) = 0.0  # spawn point, in the parent's epochs
    children: Int(0, 64) = 0  # copies of the parent's network with their own SGD noise
    child_seeds: Seq(Int(1, 2**32 - 1), "distinct") = ()  # noise streams; default 1..children
    reexpand_every: Seq(Int(1), "set") = ()  # re-expand each order every K steps
    reexpand_doubling: Seq(Int(1), "set") = ()  # intervals K, 2K, 4K, ...


def _rule(keys: Sequence[str], key: str, text: str) -> PydanticCustomError:
    """A cross-field error: `key` is reported, `keys` are the settings that together broke it."""
    return PydanticCustomError("cross_field", "{text}", {"keys": list(keys), "key": key,
                                                         "text": text})


def _run_name(value: str) -> str:
    if not value or "/" in value or "\0" in value or value in (".", "..") or value != value.strip():
        raise PydanticCustomError("value", "expected a name without '/' (the run goes to "
                                  "runs/NAME unless --out says otherwise)")
    return value


class Recipe(Section):
    """A complete, validated training recipe."""
    name: Annotated[str, AfterValidator(_run_name)] = "recipe"
    seed: Int(0, 2**32 - 1) = 0
    models: Optional[Seq(str, "set")] = None  # subset of full, order1..K; null: all
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    taylor: TaylorConfig = TaylorConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    spawn: SpawnConfig = SpawnConfig()

    @model_validator(mode="after")
    def _across_fields(self) -> "Recipe":
        epochs = self.train.epochs
        if any(e >= epochs for e in self.optim.decay_epochs):
            raise _rule(("optim.decay_epochs", "train.epochs"), "optim.decay_epochs",
                        f"expected epochs < train.epochs ({epochs}), got "
                        f"{list(self.optim.decay_epochs)} (for a shorter run, set them too, e.g. "
                        f"--set 'optim.decay_epochs=[]')")
        if any(e > epochs for e in self.checkpoint.keep_epochs):
            raise _rule(("checkpoint.keep_epochs", "train.epochs"), "checkpoint.keep_epochs",
                        f"expected epochs <= train.epochs ({epochs}), got "
                        f"{list(self.checkpoint.keep_epochs)}")
        if self.models is not None:
            allowed = ["full"] + [f"order{k}" for k in self.taylor.orders]
            if not self.models or any(m not in allowed for m in self.models):
                raise _rule(("models", "taylor.orders"), "models",
                            f"expected a non-empty list of distinct names from "
                            f"{', '.join(allowed)} (full and taylor.orders), or null for all, "
                            f"got {list(self.models)}")
            if not self.eval.save_logits:
                raise _rule(("models", "eval.save_logits"), "eval.save_logits",
                            "expected true with models (report and compare merge subset runs "
                            "from their saved logits), got false")
        if self.optim.name == "adam" and (self.optim.momentum or self.optim.nesterov):
            raise _rule(("optim.name", "optim.momentum", "optim.nesterov"), "optim.momentum",
                        "momentum and nesterov are SGD's (Adam's first moment is optim.b1); "
                        f"expected 0 and false with optim.name: adam, got {self.optim.momentum}")
        if self.optim.schedule == "warmup_cosine" and self.optim.warmup_epochs >= epochs:
            raise _rule(("optim.warmup_epochs", "train.epochs"), "optim.warmup_epochs",
                        f"expected fewer than train.epochs ({epochs}), got "
                        f"{self.optim.warmup_epochs}")
        d = self.data
        if (d.dataset == "npz") != (d.path is not None):
            raise _rule(("data.dataset", "data.path"), "data.path",
                        "expected the .npz file with data.dataset: npz, and only then, got "
                        f"{d.path!r} with dataset {d.dataset}")
        if (d.mean is None) != (d.std is None) or d.mean is not None and len(d.mean) != len(d.std):
            raise _rule(("data.mean", "data.std"), "data.std",
                        "expected data.mean and data.std together, one value per channel, or "
                        f"both null, got mean {d.mean} and std {d.std}")
        if self.model.arch in BUILTIN_ARCHS and self.model.kwargs:
            raise _rule(("model.arch", "model.kwargs"), "model.kwargs",
                        f"expected {{}} with the built-in arch {self.model.arch} (it takes "
                        f"model.depth, width, ...), got {self.model.kwargs}")
        if self.eval.closed_form:
            needs = {"optim.name": (self.optim.name, "sgd"),
                     "train.loss": (self.train.loss, "mse"), "optim.momentum": (self.optim.momentum, 0),
                     "optim.weight_decay": (self.optim.weight_decay, 0),
                     "optim.grad_clip": (self.optim.grad_clip, None),
                     "data.pad": (self.data.pad, 0), "data.flip": (self.data.flip, False)}
            for key, (value, wanted) in needs.items():
                if value != wanted:
                    text = yaml.safe_dump(wanted).splitlines()[0]  # null, false, 0, mse
                    raise _rule((key, "eval.closed_form"), key,
                                f"eval.closed_form (gradient flow on MSE, in closed form) needs "
                                f"{key}: {text}, got {value!r}")
        sp = self.spawn
        if self.train.split_models and (sp.children or sp.reexpand_every or sp.reexpand_doubling):
            raise _rule(("train.split_models",), "train.split_models",
                        "spawned children and re-expanding models train in lockstep only; "
                        "expected false, got true")
        if sp.child_seeds and len(sp.child_seeds) != sp.children:
            raise _rule(("spawn.child_seeds", "spawn.children"), "spawn.child_seeds",
                        f"expected {sp.children} seeds (one per child) or [], got "
                        f"{list(sp.child_seeds)}")
        if sp.parent is not None and sp.epoch > epochs:
            raise _rule(("spawn.epoch", "train.epochs"), "spawn.epoch",
                        f"expected at most train.epochs ({epochs}), got {sp.epoch:g}")
        depth = self.model.depth
        if self.model.arch == "wrn" and (depth < 10 or (depth - 4) % 6):
            raise _rule(("model.depth", "model.arch"), "model.depth",
                        f"expected 6n+4 with n >= 1 (10, 16, 22, ...) for arch wrn, got {depth}")
        return self


SECTIONS: dict[str, type[Section]] = {
    name: f.annotation for name, f in Recipe.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, Section)}
_TOP = list(Recipe.model_fields)
_FIELDS = {name: f for name, f in Recipe.model_fields.items()} | {
    f"{s}.{name}": f for s, cls in SECTIONS.items() for name, f in cls.model_fields.items()}
KEYS = [k for k in _FIELDS if k not in SECTIONS]  # every settable dotted key, in schema order


# ---- what a field accepts, in words, read from its annotation ----

_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings"), bool: ("true or false", "booleans")}
_BOUNDS = ((at.Ge, "ge", ">="), (at.Gt, "gt", ">"), (at.Le, "le", "<="), (at.Lt, "lt", "<"))


def _unwrap(tp: Any) -> tuple[Any, list, bool]:
    """An annotation without its Annotated/Optional wrappers, their metadata, and whether None is allowed."""
    meta: list = []
    optional = False
    while True:
        if get_origin(tp) is Annotated:
            tp, *more = get_args(tp)
            meta += more
        elif get_origin(tp) is not None and type(None) in get_args(tp):
            tp = next(a for a in get_args(tp) if a is not type(None))
            optional = True
        else:
            return tp, meta, optional


def _limits(meta: list) -> str:
    parts = []
    for m in meta:
        for item in getattr(m, "metadata", [m]):  # Field(...) carries its bounds inside
            for cls, attr, op in _BOUNDS:
                if isinstance(item, cls):
                    value = getattr(item, attr)
                    parts.append(f"{op} {value}" if isinstance(value, int) else f"{op} {value:g}")
    return " and ".join(parts)


def _expected(key: str) -> str:
    """Human description of what dotted `key` accepts, e.g. 'a number >= 0 and < 1'."""
    info = _FIELDS[key]
    tp, meta, optional = _unwrap(info.annotation)
    meta += info.metadata
    seq = next((m.kind for m in meta if isinstance(m, _Sequence)), None)
    says = next((m.text for m in meta if isinstance(m, _Says)), None)
    if says:
        text = says
    elif get_origin(tp) is tuple:
        item, item_meta, _ = _unwrap(get_args(tp)[0])
        text = f"{_NOUNS[item][1]} {_limits(item_meta)}".strip()
        text = {"increasing": "a strictly increasing list of ", "distinct": "a list of distinct ",
                "set": "a list of distinct "}.get(seq, "a list of ") + text
    elif get_origin(tp) is Literal:
        text = "one of " + ", ".join(map(str, get_args(tp)))
    else:
        text = f"{_NOUNS[tp][0]} {_limits(meta)}".strip()
    return text + (" or null" if optional else "")


def _unknown(where: str, key: str) -> RecipeError:
    """Error for an unknown dotted key, with a close valid key as a hint when there is one."""
    section, dot, rest = key.partition(".")
    if dot and section in SECTIONS:
        names = {n: f"{section}.{n}" for n in SECTIONS[section].model_fields}
        close = difflib.get_close_matches(rest, list(names), n=1)
    else:
        names = {k: k for k in _TOP}
        close = difflib.get_close_matches(key, list(names), n=1)
        if not close:  # a section key written at top level, e.g. `lr: 0.1`
            names = {k.rpartition(".")[2]: k for k in reversed(KEYS)}
            close = difflib.get_close_matches(key, list(names), n=1)
    hint = f" (did you mean '{names[close[0]]}'?)" if close else ""
    return RecipeError(f"{where}: unknown key '{key}'{hint}")


# ---- reading: YAML text, --set overrides, validation ----

class _Loader(yaml.SafeLoader):
    """SafeLoader (no Python objects) that refuses a key written twice in one mapping."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key (a list as a key): SafeLoader says so itself
            continue
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice (lines {first} and "
                f"{key_node.start_mark.line + 1})", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text to builtins (safe, duplicate keys refused), or one line naming `source`."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{source}: not valid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise RecipeError(f"{source}: not valid YAML: nested too deeply for a recipe") from None


def _parse_override(text: str) -> tuple[str, Any]:
    """Split and check one `--set a.b=value` string into (dotted key, parsed value)."""
    where = f"--set {text}"
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise RecipeError(f"{where}: expected key=value")
    if key in SECTIONS:
        example = next(iter(SECTIONS[key].model_fields))
        raise RecipeError(f"{where}: '{key}' is a section, not a value; set one of its keys, "
                          f"e.g. {key}.{example}=...")
    if key not in _FIELDS:
        raise _unknown(where, key)
    return key, parse_yaml(raw, where) if raw.strip() else None


def _structure(raw: Any, source: str) -> dict:
    """Check the recipe's shape (a mapping of sections, known keys); a copy safe to edit."""
    if raw is None:
        raise RecipeError(f"{source}: recipe is empty; expected a mapping of sections "
                          f"({', '.join(SECTIONS)})")
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: top level must be a mapping of sections, got "
                          f"{type(raw).__name__}")
    raw = dict(raw)
    for key in raw:
        if key in _FIELDS and key not in _TOP:  # dotted paths are --set syntax, not nesting
            section, _, leaf = key.partition(".")
            raise RecipeError(f"{source}: unknown key '{key}' (write it nested: '{section}:' "
                              f"then '  {leaf}: ...')")
        if key not in _TOP:
            raise _unknown(source, str(key))
    for name in SECTIONS:
        section = {} if raw.get(name) is None else raw[name]  # every line commented out
        if not isinstance(section, dict):
            raise RecipeError(f"{source}: key {name}: expected a mapping of {name}.* keys, "
                              f"got {section!r}")
        for key in section:
            if f"{name}.{key}" not in _FIELDS:
                raise _unknown(source, f"{name}.{key}")
        raw[name] = dict(section)
    return raw


def recipe_from_dict(raw: Mapping | None, source: str = "<recipe>",
                     overrides: Sequence[str] = ()) -> Recipe:
    """Validate a raw nested dict (plus `--set` overrides) into a Recipe."""
    raw = _structure(raw, source)
    origin: dict[str, str] = {}  # dotted key -> the --set flag that last set it
    for text in overrides:
        key, value = _parse_override(text)
        section, dot, leaf = key.partition(".")
        if dot:
            raw[section][leaf] = value
        else:
            raw[key] = value
        origin.pop(key, None)
        origin[key] = f"--set {text}"

    def where(*keys: str) -> str:
        flags = [flag for key, flag in origin.items() if key in keys]
        return flags[-1] if flags else source

    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise _first_error(e, raw, where) from None


def _first_error(error: ValidationError, raw: dict, where) -> RecipeError:
    """The first of pydantic's errors as one line naming the key, in schema order."""
    e = error.errors()[0]
    if e["type"] == "cross_field":
        ctx = e["ctx"]
        return RecipeError(f"{where(*ctx['keys'])}: key {ctx['key']}: {ctx['text']}")
    if e["type"] == "value":  # a rule of one field, with its own words
        key = ".".join(str(p) for p in e["loc"] if isinstance(p, str))
        return RecipeError(f"{where(key)}: key {key}: {e['msg']}, got {e['input']!r}")
    loc = [str(part) for part in e["loc"] if isinstance(part, str)]
    key = ".".join(loc[:2]) if loc and loc[0] in SECTIONS else loc[0] if loc else "recipe"
    if key not in _FIELDS:  # cannot happen after _structure; say what pydantic said
        return RecipeError(f"{where(key)}: key {key}: {e['msg']}")
    section, dot, leaf = key.partition(".")
    value = raw[section].get(leaf) if dot else raw.get(key)
    return RecipeError(f"{where(key)}: key {key}: expected {_expected(key)}, got {value!r}")


def _read_text(path: Path, source: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise RecipeError(f"{source}: is a directory, not a recipe file") from None
    except OSError as e:
        raise RecipeError(f"{source}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source}: larger than {MAX_RECIPE_BYTES // 1024} KiB; expected a "
                          f"recipe (a few hundred bytes of YAML)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{source}: not UTF-8 text") from None


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML file, apply `--set` overrides and validate it."""
    path = Path(path)
    source = str(path)
    raw = parse_yaml(_read_text(path, source), source)
    if isinstance(raw, dict) and "name" not in raw:
        raw = {"name": path.stem, **raw}
    return _with_module_path(recipe_from_dict(raw, source, overrides), path.parent)


# ---- bundled recipes: shipped in the package (taylorcli.recipes, the checkout's recipes/) ----

def bundled_recipes() -> dict[str, Any]:
    """Name -> file of every recipe that ships with taylorcli, sorted by name."""
    folder = resources.files("taylorcli.recipes")
    found = {p.name[:-5]: p for p in folder.iterdir() if p.name.endswith(".yaml")}
    return dict(sorted(found.items()))


def recipe_description(path: Any) -> str:
    """A recipe's one-line description: the first line of its opening comment."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.lstrip("#").strip():
            return line.lstrip("#").strip()
        if line.strip() and not line.startswith("#"):
            break
    return "(no description)"


def resolve_recipe(recipe: str | Path) -> Path | Any:
    """A recipe argument as a file: a YAML path, or the name of a bundled recipe."""
    path = Path(recipe)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(recipe):
        return path  # load_recipe says what is wrong with it
    bundled = bundled_recipes()
    if str(recipe) in bundled:
        return bundled[str(recipe)]
    close = difflib.get_close_matches(str(recipe), list(bundled), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise RecipeError(f"RECIPE {recipe}: no such file, and no bundled recipe of that "
                      f"name{hint}; bundled: {', '.join(bundled)} (see `taylorcli recipes`)")


def load_named_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """`load_recipe` for a path or a bundled recipe's name."""
    found = resolve_recipe(recipe)
    if isinstance(found, Path):
        return load_recipe(found, overrides)
    source = f"{recipe} (bundled recipe)"
    raw = parse_yaml(found.read_text(encoding="utf-8"), source)
    if isinstance(raw, dict) and "name" not in raw:
        raw = {"name": str(recipe), **raw}
    return _with_module_path(recipe_from_dict(raw, source, overrides),
                             Path(str(found)).parent)


def _with_module_path(recipe: Recipe, folder: Path) -> Recipe:
    """A user module's recipe remembers the folder beside it, for resumes and spawns."""
    if recipe.model.arch in BUILTIN_ARCHS or recipe.model.module_path is not None:
        return recipe
    model = recipe.model.model_copy(update={"module_path": str(folder.resolve())})
    return recipe.model_copy(update={"model": model})


# ---- which keys make a setting ----

# Keys that say where data, checkpoints and compiled programs live, or how evaluation is
# batched, not what a run learns: runs that differ only in them are the same setting.
STORAGE_KEYS = ("data.data_dir", "data.archive", "checkpoint.", "train.split_models",
                "train.compile_cache", "eval.batch_size", "eval.save_logits")


def setting_key(recipe: "Recipe", ignore: Sequence[str] = ()) -> str:
    """What makes a setting: every key but the storage keys and `ignore` (prefixes allowed)."""
    skip = STORAGE_KEYS + tuple(ignore)
    return repr(sorted((k, repr(v)) for k, v in recipe_to_flat(recipe).items()
                       if not k.startswith(skip)))


# ---- writing ----

def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain nested dict of builtins (tuples as lists) that round-trips through recipe_from_dict."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return [plain(x) for x in obj] if isinstance(obj, (tuple, list)) else obj

    return plain(recipe.model_dump())


def recipe_to_flat(recipe: Recipe) -> dict:
    """Every field of a recipe under its dotted key, e.g. {'optim.lr': 0.1, ...}."""
    return {key: value for name, section in recipe_to_dict(recipe).items()
            for key, value in (((f"{name}.{k}", v) for k, v in section.items())
                               if isinstance(section, dict) else [(name, section)])}


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes lists inline (`orders: [1, 2, 3, 4]`) but sections as blocks."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v,
                                                                flow_style=True))


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a recipe, sections in schema order."""
    return yaml.dump(recipe_to_dict(recipe), Dumper=_Dumper, sort_keys=False)


def replace(recipe: Recipe, **changes: Any) -> Recipe:
    """A copy of `recipe` with top-level fields changed, validated again."""
    return Recipe.model_validate({**recipe.model_dump(), **changes})
