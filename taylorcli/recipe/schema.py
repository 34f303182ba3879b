"""The recipe's schema: a frozen pydantic model, one section per part of a run.

Each field's type, bounds and choices live in its annotation (`fields.py`); rules that span
fields are the model validator at the end. The comments beside the fields are their
documentation (`taylorcli recipes --fields` prints them as a table).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Sequence

import yaml
from pydantic import AfterValidator, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..names import BUILTIN_ARCHS, is_dataset_name, is_user_arch, model_names
from .fields import Int, Num, Says, Section, Seq


def _dataset_name(value: str) -> str:
    if is_dataset_name(value):
        return value
    raise PydanticCustomError("value", "expected digits, cifar10, cifar100, synthetic, npz, or "
                              "the name of a TFDS image-classification dataset (mnist, "
                              "svhn_cropped, fashion_mnist, ...)")


def _arch_name(value: str) -> str:
    if value in BUILTIN_ARCHS or is_user_arch(value):
        return value
    raise PydanticCustomError("value", "expected one of cnn, wrn, mlp, twolayer, or your own "
                              "network by import path, 'package.module:Name'")

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

    dataset: Annotated[str, AfterValidator(_dataset_name), Says(
        "one of digits, cifar10, cifar100, synthetic, npz, or a TFDS dataset name")] = "cifar10"
    """digits (scikit-learn's, offline), cifar10, cifar100, synthetic, npz (data.path), or any
    TFDS image-classification dataset by name (mnist, svhn_cropped, ...) from data.data_dir."""
    data_dir: Optional[str] = None
    """The TFDS data_dir holding a prepared (array_record) copy of the dataset."""
    archive: Optional[str] = None
    """CIFAR: the official python archive (.tar.gz) or its extracted folder."""
    path: Optional[str] = None
    """npz: a .npz file of x_train, y_train, x_test, y_test."""
    mean: Optional[Seq(Num())] = None
    """Per-channel mean of the [0, 1] pixels; null: computed on the training set (CIFAR: the
    usual constants) and written into the run's recipe.yaml."""
    std: Optional[Seq(Num(gt=0))] = None
    """Per-channel standard deviation of the [0, 1] pixels; null: as data.mean."""
    train_limit: Optional[Int(1)] = None
    """Train on the first N training examples only; null: all."""
    test_limit: Optional[Int(1)] = None
    """Evaluate on the first N test examples only; null: all."""
    synthetic_train: Int(1, 10**7) = 512
    """synthetic: training examples (random 32x32x3 images, 10 classes)."""
    synthetic_test: Int(1, 10**7) = 256
    """synthetic: test examples."""
    pad: Int(0, 1024) = 4
    """Augmentation: pad each image with this many black pixels, then crop a random window of
    the original size (a shift of up to ±pad pixels); 0 turns it off. Patch models (ViT,
    MLP-Mixer) and small images usually want 0."""
    flip: bool = True
    """Augmentation: mirror each image left-right with probability 1/2 (not for digits or
    text-like images, whose meaning a mirror changes)."""
    crop: Literal["per_image", "per_batch"] = "per_image"
    """per_image: a random crop offset per image; per_batch: one per batch, as the authors'
    code (tf.image.random_crop on the whole batch); flips stay per image either way."""


class ModelConfig(Section):
    """Network architecture and parameterization."""

    arch: Annotated[str, AfterValidator(_arch_name), Says(
        "one of cnn, wrn, mlp, twolayer, or an import path 'package.module:Name'")] = "cnn"
    """cnn, wrn, mlp, twolayer (Theorem 1's network), or your own network by import path
    'package.module:Name': a flax linen Module class, a flax nnx Module class, or a function
    returning a stax-style (init_fn, apply_fn) pair."""
    kwargs: Annotated[dict[str, Any], AfterValidator(_plain_value)] = {}
    """Your network's constructor arguments (num_classes is filled in from the data when the
    constructor takes it and kwargs does not set it)."""
    module_path: Optional[str] = None
    """The folder your network is imported from (besides the working directory): by default
    the recipe file's own folder, recorded so that resumes and spawns find it again."""
    depth: Int(1, 10_000) = 4
    """cnn: convolutions; wrn: 6n+4 (10, 16, 22, ...); mlp: hidden layers."""
    width: Int(1, 1 << 20) = 128
    """cnn: channels; wrn: the first convolution's channels; mlp and twolayer: hidden units."""
    widen: Int(1, 1 << 10) = 4
    """wrn: the widening factor k (groups of 16k, 32k, 64k channels)."""
    activation: Literal["relu", "tanh", "gelu", "softplus"] = "relu"
    """The nonlinearity after every hidden layer."""
    parameterization: Literal["standard", "ntk"] = "standard"
    """standard: Glorot-normal weights; ntk: N(0, 1) weights scaled by w_std/sqrt(fan_in) in
    the forward pass (Lee et al. 2019); twolayer is always ntk."""
    w_std: Num(gt=0) = math.sqrt(2.0)
    """ntk: sigma_w, a standard deviation (Lee et al.'s sigma_w^2 = 2)."""
    b_std: Num(ge=0) = math.sqrt(0.1)
    """ntk: sigma_b, a standard deviation (Lee et al.'s sigma_b^2 = 0.1)."""


class TaylorConfig(Section):
    """Which Taylorized models to train alongside the network (empty: network only)."""

    orders: Seq(Int(1, 32), "set") = (1, 2, 3, 4)
    """The Taylor orders k trained in lockstep with the network (1: the linearized model)."""


class TrainConfig(Section):
    """Training length, batch size and loss."""

    epochs: Int(1, 10**6) = 10
    """Passes over the training set."""
    batch_size: Int(1, 1 << 20) = 128
    """Examples per optimizer step (split across devices; a multiple of their number)."""
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    """cross_entropy on the logits, or mse: (1/2N) Σ ‖f(x) − one_hot(y)‖² (Lee et al.)."""
    split_models: bool = False
    """Place each model (group) on its own local device instead of every model on every device
    (for models too large to hold together)."""
    compile_cache: Optional[str] = None
    """Where compiled programs are kept between runs (JAX's persistent cache), so that a
    resumed, requeued or repeated run does not compile again: null for ~/.cache/taylorcli/jax
    (or $TAYLORCLI_COMPILE_CACHE), off for none; a shared folder serves a whole job array."""
    last_batch: Literal["drop", "keep"] = "drop"
    """keep: also train on each epoch's last partial batch, as the authors' code (196 steps per
    epoch at batch 256 on CIFAR-10; drop gives 195)."""
    precision: Literal["float32", "float64"] = "float32"
    """float64: every model, optimizer state and metric in double precision (JAX's x64 mode,
    switched on for the run only), for differences below float32's resolution."""

    @field_validator("compile_cache", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML reads a bare `off`/`no`/`false` as False and `on`/`yes`/`true` as True.
        return ("off" if value is False else None) if isinstance(value, bool) else value


class OptimConfig(Section):
    """The optimizer (optax) shared by the network and every Taylorized model, each its own copy."""

    name: Literal["sgd", "adam"] = "sgd"
    """sgd (with optional momentum) or adam."""
    lr: Num(gt=0) = 0.1
    """The peak learning rate of the schedule."""
    momentum: Num(ge=0, lt=1) = 0.0
    """sgd: heavy-ball momentum (0: plain SGD, as Bai et al.)."""
    nesterov: bool = False
    """sgd: Nesterov momentum."""
    b1: Num(ge=0, lt=1) = 0.9
    """adam: decay of the first moment."""
    b2: Num(ge=0, lt=1) = 0.999
    """adam: decay of the second moment."""
    eps: Num(gt=0) = 1e-8
    """adam: added to the denominator."""
    weight_decay: Num(ge=0) = 0.0
    """L2 weight decay, added to the gradient before the optimizer."""
    grad_clip: Optional[Num(gt=0)] = None
    """Clip each model's gradient to this global norm; null: no clipping."""
    schedule: Literal["constant", "step", "cosine", "warmup_cosine"] = "step"
    """constant; step (x decay_factor at decay_epochs or decay_fractions); cosine (to
    final_lr_factor x lr at the end); warmup_cosine (linear from 0 over warmup_epochs, then
    cosine)."""
    decay_epochs: Seq(Int(1, 10**6), "increasing") = ()
    """step: the epochs at which the rate is multiplied by decay_factor (each < train.epochs)."""
    decay_fractions: Seq(Num(gt=0, lt=1), "increasing") = ()
    """step: the same, as fractions of train.epochs (0.5: halfway), so a shorter run keeps its
    shape; instead of decay_epochs."""
    decay_factor: Num(gt=0, le=1) = 0.1
    """step: the factor applied at each decay."""
    warmup_epochs: Int(0, 10**6) = 0
    """warmup_cosine: epochs of linear warmup."""
    final_lr_factor: Num(ge=0, le=1) = 0.0
    """cosine, warmup_cosine: the final rate as a fraction of lr."""


class EvalConfig(Section):
    """When and how to evaluate."""

    every_epochs: Int(1, 10**6) = 1
    """Evaluate every N epochs (and at the start and the end)."""
    steps: Seq(Int(1), "increasing") = ()
    """Extra early evaluations, in optimizer steps."""
    batch_size: Int(1, 1 << 20) = 1000
    """Test examples per evaluation batch."""
    save_logits: bool = True
    """Save every model's test logits at each evaluation (logits/*.npz)."""
    kernel_n: Int(0, 10**6) = 0
    """The empirical NTK of every model on this many training examples at each evaluation
    (kernels.csv: distance from the first kernel, velocity, relative change); 0: none."""
    kernel_outputs: Literal["trace", "full"] = "trace"
    """trace: the kernel summed over logits (n x n); full: n·C x n·C."""
    kernel_block: Int(1, 1 << 16) = 16
    """Examples per Jacobian block (memory grows with block x classes x parameters)."""
    closed_form: bool = False
    """Lee et al.: every model against the linearized network's closed-form MSE trajectory."""


class LogConfig(Section):
    """What is logged while a run trains, besides metrics.csv."""

    tensorboard: bool = False
    """Write TensorBoard event files to RUN/tensorboard/: each model's train loss every
    log.every_steps steps, every evaluation metric, the learning rate and the recipe."""
    every_steps: Int(1, 10**6) = 10
    """How often the train loss is logged, in optimizer steps."""


class CheckpointConfig(Section):
    """When to checkpoint and which checkpoints to keep."""

    every_epochs: Int(1, 10**6) = 1
    """Checkpoint every N epochs (and at the end, and on SIGTERM/SIGUSR1)."""
    every_steps: Optional[Int(1)] = None
    """Also checkpoint every N optimizer steps."""
    keep: Int(1, 10**6) = 2
    """How many of the newest checkpoints are kept."""
    keep_epochs: Seq(Int(0, 10**6), "increasing") = ()
    """Epochs whose checkpoints are always kept (to spawn from them later)."""


class SpawnConfig(Section):
    """Where a spawned run starts: a parent run's full network at an epoch (`taylorcli spawn`)."""

    parent: Optional[str] = None
    """The parent's run directory; null for an ordinary run."""
    epoch: Num(ge=0, le=10**6) = 0.0
    """The spawn point, in the parent's epochs."""
    children: Int(0, 64) = 0
    """Copies of the parent's network trained with their own SGD noise (Fort et al.)."""
    child_seeds: Seq(Int(1, 2**32 - 1), "distinct") = ()
    """The children's noise streams; default 1 .. children."""
    reexpand_every: Seq(Int(1), "set") = ()
    """Also train each order re-expanded every K steps (Goldwaser & Ge)."""
    reexpand_doubling: Seq(Int(1), "set") = ()
    """Also train each order re-expanded after K, 2K, 4K, ... steps."""


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
    """The run's name (the run goes to runs/NAME unless --out says otherwise)."""
    seed: Int(0, 2**32 - 1) = 0
    """Initialization, data order and augmentation all derive from it."""
    models: Optional[Seq(str, "set")] = None
    """Train only these of full, order1 .. orderK (with the whole recipe's seeds and data
    order; report and compare merge such parts); null: all."""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    taylor: TaylorConfig = TaylorConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    spawn: SpawnConfig = SpawnConfig()

    @model_validator(mode="after")
    def _across_fields(self) -> "Recipe":
        epochs = self.train.epochs
        if self.optim.decay_epochs and self.optim.decay_fractions:
            raise _rule(("optim.decay_epochs", "optim.decay_fractions"), "optim.decay_fractions",
                        f"expected decay_epochs or decay_fractions, not both, got "
                        f"{list(self.optim.decay_epochs)} and {list(self.optim.decay_fractions)}")
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
            allowed = model_names(self.taylor.orders)
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
TOP_KEYS = list(Recipe.model_fields)
# every field under its dotted key ('optim.lr'), sections and top-level keys included
FIELDS = {name: f for name, f in Recipe.model_fields.items()} | {
    f"{s}.{name}": f for s, cls in SECTIONS.items() for name, f in cls.model_fields.items()}
KEYS = [k for k in FIELDS if k not in SECTIONS]  # every settable dotted key, in schema order
