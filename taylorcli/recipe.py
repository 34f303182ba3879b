"""Recipe schema for `taylorcli train`: YAML loading, --set overrides, validation and dumping."""

import difflib
import math
import operator
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml


class RecipeError(ValueError):
    """Bad recipe or override; str(e) is ONE line naming the file/key/flag and what is allowed."""

    def __init__(self, message: str):
        # Callers print this as a single CLI error line, so never let a newline through.
        super().__init__(" ".join(str(message).splitlines()))


def _spec(default: Any, rule: str | tuple[str, ...] | None = None, seq: str | None = None) -> Any:
    """Dataclass field whose metadata carries its constraint: bounds like '>= 0, < 1' or a tuple of choices."""
    return field(default=default, metadata={"rule": rule, "seq": seq})


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to augment it."""
    dataset: str = _spec("cifar10", ("digits", "cifar10", "cifar100", "synthetic"))
    data_dir: str | None = None  # TFDS data_dir
    archive: str | None = None  # local CIFAR python archive (.tar.gz) or extracted folder, for offline machines
    train_limit: int | None = _spec(None, ">= 1")
    test_limit: int | None = _spec(None, ">= 1")
    synthetic_train: int = _spec(512, ">= 1")
    synthetic_test: int = _spec(256, ">= 1")
    pad: int = _spec(4, ">= 0")
    flip: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture and parameterization."""
    arch: str = _spec("cnn", ("cnn", "wrn", "mlp"))
    depth: int = _spec(4, ">= 1")  # wrn additionally needs 6n+4, checked across fields
    width: int = _spec(128, ">= 1")  # cnn: channels; wrn: first conv channels; mlp: hidden units
    widen: int = _spec(4, ">= 1")  # wrn widening factor k
    activation: str = _spec("relu", ("relu", "tanh", "gelu", "softplus"))
    parameterization: str = _spec("standard", ("standard", "ntk"))
    w_std: float = _spec(math.sqrt(2.0), "> 0")  # sigma_w; only used by the ntk parameterization
    b_std: float = _spec(0.1, ">= 0")  # sigma_b; only used by the ntk parameterization


@dataclass(frozen=True)
class TaylorConfig:
    """Which Taylorized models to train alongside the network (empty: network only)."""
    orders: tuple[int, ...] = _spec((1, 2, 3, 4), ">= 1", seq="distinct")


@dataclass(frozen=True)
class TrainConfig:
    """Training length, batch size and loss."""
    epochs: int = _spec(10, ">= 1")
    batch_size: int = _spec(128, ">= 1")
    loss: str = _spec("cross_entropy", ("cross_entropy", "mse"))
    split_models: bool = False  # each model (group) on its own local device, not replicated on all


@dataclass(frozen=True)
class OptimConfig:
    """SGD settings shared by the network and every Taylorized model."""
    lr: float = _spec(0.1, "> 0")
    momentum: float = _spec(0.0, ">= 0, < 1")
    nesterov: bool = False
    weight_decay: float = _spec(0.0, ">= 0")
    grad_clip: float | None = _spec(None, "> 0")  # global-norm clipping
    schedule: str = _spec("step", ("constant", "step"))
    decay_epochs: tuple[int, ...] = _spec((), ">= 1", seq="increasing")  # must also be < train.epochs
    decay_factor: float = _spec(0.1, "> 0, <= 1")


@dataclass(frozen=True)
class EvalConfig:
    """When and how to evaluate."""
    every_epochs: int = _spec(1, ">= 1")
    steps: tuple[int, ...] = _spec((), ">= 1", seq="increasing")  # extra early evaluations, in optimizer steps
    batch_size: int = _spec(1000, ">= 1")
    save_logits: bool = True
    kernel_n: int = _spec(0, ">= 0")  # empirical NTK of every model on this many training examples; 0: off
    kernel_outputs: str = _spec("trace", ("trace", "full"))  # sum over logits (n x n), or n·C x n·C
    kernel_block: int = _spec(16, ">= 1")  # examples per Jacobian block: memory ~ block·C·params floats
    closed_form: bool = False  # Lee et al.: compare every model with the linearized MSE closed form


@dataclass(frozen=True)
class CheckpointConfig:
    """When to checkpoint and which checkpoints to keep."""
    every_epochs: int = _spec(1, ">= 1")
    every_steps: int | None = _spec(None, ">= 1")  # also checkpoint every N optimizer steps
    keep: int = _spec(2, ">= 1")  # newest checkpoints kept
    keep_epochs: tuple[int, ...] = _spec((), ">= 0", seq="increasing")  # kept for spawning, never deleted


@dataclass(frozen=True)
class SpawnConfig:
    """Where a spawned run starts: a parent run's full network at an epoch (`taylorcli spawn`)."""
    parent: str | None = None  # the parent's run directory; null for an ordinary run
    epoch: float = _spec(0.0, ">= 0")  # spawn point, in the parent's epochs
    children: int = _spec(0, ">= 0")  # copies of the parent's network with their own SGD noise
    child_seeds: tuple[int, ...] = _spec((), ">= 1", seq="distinct")  # noise streams; default 1..children
    reexpand_every: tuple[int, ...] = _spec((), ">= 1", seq="distinct")  # re-expand each order every K steps
    reexpand_doubling: tuple[int, ...] = _spec((), ">= 1", seq="distinct")  # intervals K, 2K, 4K, ...


@dataclass(frozen=True)
class Recipe:
    """A complete, validated training recipe."""
    name: str = "recipe"
    seed: int = _spec(0, ">= 0")
    models: tuple[str, ...] | None = _spec(None, None, seq="distinct")  # subset of full, order1..K; null: all
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    taylor: TaylorConfig = field(default_factory=TaylorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    spawn: SpawnConfig = field(default_factory=SpawnConfig)


SECTIONS = {f.name: f.type for f in fields(Recipe) if is_dataclass(f.type)}
_TOP = {f.name: f for f in fields(Recipe)}
_FIELDS = _TOP | {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in fields(cls)}
KEYS = [k for k in _FIELDS if k not in SECTIONS]  # every settable dotted key, in schema order
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans")}
_BAD = object()


def _shape(tp: Any) -> tuple[type, bool, bool]:
    """Split an annotation into (element type, optional, is_tuple)."""
    args = typing.get_args(tp)
    optional = typing.get_origin(tp) in (types.UnionType, typing.Union) and type(None) in args
    if optional:
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0], optional, True
    return tp, optional, False


def _bounds(rule: Any) -> list[tuple[str, float]]:
    """Parse '>= 0, < 1' into [('>=', 0.0), ('<', 1.0)]."""
    if not isinstance(rule, str):
        return []
    return [(op, float(num)) for op, num in (part.split() for part in rule.split(","))]


def _expected(key: str) -> str:
    """Human description of what `key` accepts, e.g. 'a number >= 0 and < 1'."""
    f = _FIELDS[key]
    base, optional, is_seq = _shape(f.type)
    rule, seq = f.metadata.get("rule"), f.metadata.get("seq")
    if isinstance(rule, tuple):
        text = "one of " + ", ".join(rule)
    else:
        limits = " and ".join(f"{op} {num:g}" for op, num in _bounds(rule))
        one, many = _NOUNS[base]
        text = f"{many if is_seq else one} {limits}".strip()
        if is_seq:
            text = {"increasing": "a strictly increasing list of ", "distinct": "a list of distinct "}.get(
                seq, "a list of ") + text
    return text + (" or null" if optional else "")


def _scalar(base: type, rule: Any, value: Any) -> Any:
    """Convert one value to `base` and check its rule; _BAD when it does not fit."""
    if base is float and isinstance(value, str):
        try:  # pyyaml reads `1e-3` as a string, and researchers write it that way
            value = float(value)
        except ValueError:
            return _BAD
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, base) and (base is bool or not isinstance(value, bool))
    if not ok:
        return _BAD
    if isinstance(rule, tuple):
        return value if value in rule else _BAD
    return value if all(_OPS[op](value, num) for op, num in _bounds(rule)) else _BAD


def _convert(key: str, value: Any, where: str) -> Any:
    """Validate and convert the raw value of dotted `key`, raising RecipeError prefixed with `where`."""
    f = _FIELDS[key]
    base, optional, is_seq = _shape(f.type)
    rule, seq = f.metadata.get("rule"), f.metadata.get("seq")
    if value is None and optional:
        return None
    if not is_seq:
        out = _scalar(base, rule, value)
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        out = [_scalar(base, rule, v) for v in items]
        if value is None or isinstance(value, dict) or any(v is _BAD for v in out):
            out = _BAD
        elif seq == "increasing" and any(a >= b for a, b in zip(out, out[1:])):
            out = _BAD
        elif seq == "distinct":
            out = tuple(sorted(out)) if len(set(out)) == len(out) else _BAD
        out = out if out is _BAD else tuple(out)
    if out is _BAD:
        raise RecipeError(f"{where}: key {key}: expected {_expected(key)}, got {value!r}")
    return out


def _unknown(where: str, key: str) -> RecipeError:
    """Error for an unknown dotted key, with a close valid key as a hint when there is one."""
    section, dot, rest = key.partition(".")
    if dot and section in SECTIONS:
        names = {f.name: f"{section}.{f.name}" for f in fields(SECTIONS[section])}
        close = difflib.get_close_matches(rest, list(names), n=1)
    else:
        names = {k: k for k in _TOP}
        close = difflib.get_close_matches(key, list(names), n=1)
        if not close:  # a section key written at top level, e.g. `lr: 0.1`
            names = {k.rpartition(".")[2]: k for k in reversed(KEYS)}
            close = difflib.get_close_matches(key, list(names), n=1)
    hint = f" (did you mean '{names[close[0]]}'?)" if close else ""
    return RecipeError(f"{where}: unknown key '{key}'{hint}")


def _parse_override(text: str) -> tuple[str, Any]:
    """Split and check one `--set a.b=value` string into (dotted key, parsed value)."""
    where = f"--set {text}"
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise RecipeError(f"{where}: expected key=value")
    if key in SECTIONS:
        example = fields(SECTIONS[key])[0].name
        raise RecipeError(f"{where}: '{key}' is a section, not a value; set one of its keys, e.g. {key}.{example}=...")
    if key not in _FIELDS:
        raise _unknown(where, key)
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: value is not valid YAML: {getattr(e, 'problem', None) or e}") from None


def recipe_from_dict(raw: dict, source: str = "<recipe>", overrides: Sequence[str] = ()) -> Recipe:
    """Validate a raw nested dict (plus `--set` overrides) into a Recipe."""
    if raw is None:
        raise RecipeError(f"{source}: recipe is empty; expected a mapping of sections ({', '.join(SECTIONS)})")
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    for key in raw:
        if key in _FIELDS and key not in _TOP:  # dotted paths are --set syntax, not YAML nesting
            section, _, leaf = key.partition(".")
            raise RecipeError(f"{source}: unknown key '{key}' (write it nested: '{section}:' then '  {leaf}: ...')")
        if key not in _TOP:
            raise _unknown(source, str(key))
    for name in SECTIONS:
        section = {} if raw.get(name) is None else raw[name]  # `data:` with every line commented out
        if not isinstance(section, dict):
            raise RecipeError(f"{source}: key {name}: expected a mapping of {name}.* keys, got {section!r}")
        for key in section:
            if f"{name}.{key}" not in _FIELDS:
                raise _unknown(source, f"{name}.{key}")
        raw[name] = dict(section)
    origin: dict[str, str] = {}  # dotted key -> the --set flag that last set it, most recent last
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

    def convert(keys: dict, prefix: str) -> dict:
        return {k: _convert(prefix + k, v, where(prefix + k)) for k, v in keys.items()}

    top = convert({k: v for k, v in raw.items() if k not in SECTIONS}, "")
    recipe = Recipe(**top, **{name: cls(**convert(raw[name], f"{name}.")) for name, cls in SECTIONS.items()})

    if any(e >= recipe.train.epochs for e in recipe.optim.decay_epochs):
        raise RecipeError(f"{where('optim.decay_epochs', 'train.epochs')}: key optim.decay_epochs: expected epochs "
                          f"< train.epochs ({recipe.train.epochs}), got {list(recipe.optim.decay_epochs)}")
    if any(e > recipe.train.epochs for e in recipe.checkpoint.keep_epochs):
        raise RecipeError(f"{where('checkpoint.keep_epochs', 'train.epochs')}: key checkpoint.keep_epochs: expected "
                          f"epochs <= train.epochs ({recipe.train.epochs}), got {list(recipe.checkpoint.keep_epochs)}")
    if recipe.models is not None:
        _check_models(recipe, where("models", "taylor.orders", "eval.save_logits"))
    if recipe.eval.closed_form:
        needs = {"train.loss": (recipe.train.loss, "mse"), "optim.momentum": (recipe.optim.momentum, 0),
                 "optim.weight_decay": (recipe.optim.weight_decay, 0),
                 "optim.grad_clip": (recipe.optim.grad_clip, None), "data.pad": (recipe.data.pad, 0),
                 "data.flip": (recipe.data.flip, False)}
        for key, (value, wanted) in needs.items():
            if value != wanted or type(value) is not type(wanted) and isinstance(wanted, bool):
                text = yaml.safe_dump(wanted).splitlines()[0]  # null, false, 0, mse: as in YAML
                raise RecipeError(f"{where(key, 'eval.closed_form')}: key {key}: eval.closed_form (gradient "
                                  f"flow on MSE, in closed form) needs {key}: {text}, got {value!r}")
    sp = recipe.spawn
    if recipe.train.split_models and (sp.children or sp.reexpand_every or sp.reexpand_doubling):
        raise RecipeError(f"{where('train.split_models')}: key train.split_models: spawned children "
                          f"and re-expanding models train in lockstep only; expected false, got true")
    if sp.child_seeds and len(sp.child_seeds) != sp.children:
        raise RecipeError(f"{where('spawn.child_seeds', 'spawn.children')}: key spawn.child_seeds: expected "
                          f"{sp.children} seeds (one per child) or [], got {list(sp.child_seeds)}")
    if sp.parent is not None and sp.epoch > recipe.train.epochs:
        raise RecipeError(f"{where('spawn.epoch', 'train.epochs')}: key spawn.epoch: expected at most "
                          f"train.epochs ({recipe.train.epochs}), got {sp.epoch:g}")
    depth = recipe.model.depth
    if recipe.model.arch == "wrn" and (depth < 10 or (depth - 4) % 6):
        raise RecipeError(f"{where('model.depth', 'model.arch')}: key model.depth: expected 6n+4 with n >= 1 "
                          f"(10, 16, 22, ...) for arch wrn, got {depth}")
    return recipe


def _check_models(recipe: Recipe, where: str) -> None:
    """A `models` subset names models the recipe trains, and keeps what merging its runs needs."""
    allowed = ["full"] + [f"order{k}" for k in recipe.taylor.orders]
    if not recipe.models or any(m not in allowed for m in recipe.models):
        raise RecipeError(f"{where}: key models: expected a non-empty list of distinct names from "
                          f"{', '.join(allowed)} (full and taylor.orders), or null for all, got "
                          f"{list(recipe.models)}")
    if not recipe.eval.save_logits:
        raise RecipeError(f"{where}: key eval.save_logits: expected true with models (report and "
                          f"compare merge subset runs from their saved logits), got false")


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML file, apply `--set` overrides and validate it."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such file") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{source}: not UTF-8 text") from None
    except OSError as e:
        raise RecipeError(f"{source}: cannot read ({e.strerror or e})") from None
    try:
        raw = yaml.safe_load(text)  # safe_load: a recipe must never construct Python objects
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{source}: not valid YAML{at}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML: {e}") from None
    if isinstance(raw, dict) and "name" not in raw:
        raw = {"name": path.stem, **raw}
    return recipe_from_dict(raw, source, overrides)


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain nested dict of builtins (tuples as lists) that round-trips through recipe_from_dict."""

    def plain(obj: Any) -> Any:
        if is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
        return [plain(x) for x in obj] if isinstance(obj, tuple) else obj

    return plain(recipe)


def recipe_to_flat(recipe: Recipe) -> dict:
    """Every field of a recipe under its dotted key, e.g. {'optim.lr': 0.1, ...}."""
    return {key: value for name, section in recipe_to_dict(recipe).items()
            for key, value in (((f"{name}.{k}", v) for k, v in section.items())
                               if isinstance(section, dict) else [(name, section)])}


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes lists inline (`orders: [1, 2, 3, 4]`) but sections as blocks."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a recipe, sections in schema order."""
    return yaml.dump(recipe_to_dict(recipe), Dumper=_Dumper, sort_keys=False)
